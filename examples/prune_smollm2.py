"""Prune SmolLM2-135M with Wanda at 50 % and with 2:4 SparseGPT; compare perplexity and JS divergence.

python examples/prune_smollm2.py [--windows 24]
"""

from __future__ import annotations

import argparse
import copy

import prunekit
from prunekit.data import calibration_ids, eval_windows
from prunekit.eval import js_divergence, perplexity
from prunekit.models import load


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--windows", type=int, default=24, help="evaluation windows of 256 tokens")
    args = parser.parse_args()

    dense, tokenizer = load("smollm2-135m")
    calibration = calibration_ids(tokenizer, n_samples=32, seq_len=256)
    windows = eval_windows(tokenizer, seq_len=256, max_windows=args.windows)
    print(f"dense: perplexity {perplexity(dense, windows):.2f}")

    for method, kwargs in (("wanda", {"sparsity": 0.5}), ("sparsegpt", {"structure": "2:4"})):
        model = copy.deepcopy(dense)
        report = prunekit.prune(model, method=method, calibration=calibration, progress=True, **kwargs)
        print(
            f"{method} {report.structure}: perplexity {perplexity(model, windows):.2f}, "
            f"JS to dense {js_divergence(dense, model, windows):.4f} nats, "
            f"{report.achieved:.1%} of targeted weights zero"
        )


if __name__ == "__main__":
    main()
