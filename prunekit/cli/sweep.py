"""``prunekit sweep``: several methods at several sparsities, with a CSV, a markdown table and a plot."""

from __future__ import annotations

import argparse

from .common import add_model_argument, floats, names

NAME = "sweep"
HELP = "prune with several methods at several sparsities; write sweep.csv, sweep.md and sweep.png"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    p.add_argument("--methods", type=names, required=True, help="comma-separated, e.g. wanda,sparsegpt,flap")
    p.add_argument("--sparsities", type=floats, required=True, help="comma-separated, e.g. 0.2,0.3,0.5")
    p.add_argument("--out", required=True, help="directory for sweep.csv, sweep.md and sweep.png")
    p.add_argument(
        "--structure",
        default=None,
        help="unstructured (default) | N:M | structured; structured-only methods always run structured",
    )
    p.add_argument(
        "--allocation", choices=("uniform", "owl"), default=None, help="unstructured: per-block sparsity"
    )
    p.add_argument(
        "--calibration-mode", choices=("sequential", "dense"), default=None, help="default: each method's"
    )
    p.add_argument("--text", default=None, help="UTF-8 text file for calibration/eval (default: stdlib docs)")
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration windows")
    p.add_argument("--eval-windows", type=int, default=None, help="cap on evaluation windows (default: all)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from prunekit.experiments.sweep import sweep

    rows = sweep(
        args.model,
        args.methods,
        args.sparsities,
        structure=args.structure,
        n_samples=args.calib_samples,
        seq_len=args.seq_len,
        seed=args.seed,
        text=args.text,
        max_eval_windows=args.eval_windows,
        out_dir=args.out,
        allocation=args.allocation,
        calibration_mode=args.calibration_mode,
    )
    out = Path(args.out)
    print((out / "sweep.md").read_text(encoding="utf-8"))
    failed = sum(1 for r in rows if r["error"])
    print(f"{len(rows)} points ({failed} failed); wrote {out / 'sweep.csv'}, sweep.md and sweep.png")
    return 0
