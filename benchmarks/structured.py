"""Structured pruning of SmolLM2-135M: quality, size and CPU forward speed against the dense model.

Each point prunes a fresh copy and measures, in the same process and interleaved with the dense
model so both see the same machine load: perplexity (default text's held-out split, and Austen's
*Emma* from ``../shared/data`` when present), parameters, and the median forward time for batch
1 x 512 and 8 x 512 tokens (no KV cache).

    python benchmarks/structured.py
    python benchmarks/structured.py --points flap:global:0.5 --repeats 3 --eval-windows 8
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

AUSTEN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "austen_emma.txt"
DEFAULT_POINTS = [
    f"{m}:{s}:{r}"
    for r in (0.2, 0.3, 0.5)
    for m, s in (
        ("flap", "global"),
        ("flap", "uniform"),
        ("wanda-sp", "uniform"),
        ("magnitude-sp", "uniform"),
        ("seap", "logistic"),
    )
]


@torch.inference_mode()
def forward_seconds(model, batch: int, length: int, repeats: int) -> float:
    ids = torch.randint(10, 1000, (batch, length), generator=torch.Generator().manual_seed(0))
    model(ids[:, :16], use_cache=False)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(ids, use_cache=False)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    import prunekit
    from prunekit.data import calibration_ids, eval_windows
    from prunekit.eval import perplexity
    from prunekit.models import load

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", nargs="*", default=DEFAULT_POINTS, help="method:search:ratio")
    parser.add_argument("--calib", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--eval-windows", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    torch.manual_seed(0)
    dense, tok = load("smollm2-135m")
    calibration = calibration_ids(tok, n_samples=args.calib, seq_len=args.seq_len)
    texts = {"pydoc": eval_windows(tok, seq_len=args.seq_len, max_windows=args.eval_windows)}
    if AUSTEN.exists():
        texts["austen"] = eval_windows(
            tok, seq_len=args.seq_len, max_windows=args.eval_windows, source=str(AUSTEN), calib_fraction=0.5
        )
    dense_params = sum(p.numel() for p in dense.parameters())
    dense_ppl = {k: perplexity(dense, w) for k, w in texts.items()}
    cols = [
        "point",
        *[f"ppl {k}" for k in texts],
        "params",
        "params / dense",
        "prune s",
        "speed-up 1x512",
        "speed-up 8x512",
    ]
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    print(
        "| dense | "
        + " | ".join(f"{v:.2f}" for v in dense_ppl.values())
        + f" | {dense_params / 1e6:.1f}M | 1.00 | 0 | 1.00 | 1.00 |",
        flush=True,
    )
    for point in args.points:
        method, search, ratio = point.split(":")
        model = copy.deepcopy(dense)
        t0 = time.perf_counter()
        prunekit.prune(
            model,
            method=method,
            sparsity=float(ratio),
            structure="structured",
            calibration=calibration,
            structure_search=search,
        )
        seconds = time.perf_counter() - t0
        ppl = {k: perplexity(model, w) for k, w in texts.items()}
        speed = []
        for batch in (1, 8):
            d, p = [], []
            for _ in range(2):  # interleave so that load changes hit both
                d.append(forward_seconds(dense, batch, 512, args.repeats))
                p.append(forward_seconds(model, batch, 512, args.repeats))
            speed.append(min(d) / min(p))
        params = sum(x.numel() for x in model.parameters())
        print(
            f"| {point} | "
            + " | ".join(f"{v:.2f}" for v in ppl.values())
            + f" | {params / 1e6:.1f}M | {params / dense_params:.2f} | {seconds:.0f} | {speed[0]:.2f} | "
            f"{speed[1]:.2f} |",
            flush=True,
        )
        del model
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
