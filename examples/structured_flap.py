"""Remove 20 % of SmolLM2's attention and MLP weights with FLAP, then save a smaller model.

The model really shrinks (fewer heads and channels, layers of different widths), so it runs faster on
any hardware. ``prunekit.save_pretrained`` records every layer's size, and ``prunekit.from_pretrained``
rebuilds the model from it; the script reloads what it saved and checks the logits are identical.

    python examples/structured_flap.py --out smollm2-flap20
"""

from __future__ import annotations

import argparse

import torch

import prunekit
from prunekit.data import calibration_ids, eval_windows
from prunekit.eval import perplexity
from prunekit.models import load


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    model, tokenizer = load("smollm2-135m")
    windows = eval_windows(tokenizer, seq_len=256, max_windows=24)
    before = perplexity(model, windows)
    report = prunekit.prune(
        model,
        method="flap",
        sparsity=args.ratio,
        structure="structured",
        calibration=calibration_ids(tokenizer, n_samples=32, seq_len=256),
        progress=True,
    )
    print(report)
    print(
        f"perplexity {before:.2f} -> {perplexity(model, windows):.2f}; "
        f"parameters {report.params_before:,} -> {report.params_after:,}"
    )
    heads = [layer.self_attn.q_proj.out_features // 64 for layer in model.model.layers]
    print("query heads per layer:", heads)
    ids = tokenizer("The Python interpreter", return_tensors="pt").input_ids
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False)
    print(tokenizer.decode(out[0]))
    if args.out:
        prunekit.save_pretrained(model, args.out, tokenizer=tokenizer, record=report)
        reloaded = prunekit.from_pretrained(args.out)
        with torch.no_grad():
            same = torch.equal(model(ids).logits, reloaded(ids).logits)
        print(f"saved to {args.out}; reloaded with prunekit.from_pretrained, identical logits: {same}")


if __name__ == "__main__":
    main()
