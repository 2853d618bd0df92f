"""``prunekit sweep``: several methods at several sparsities, with a CSV, a markdown table and a plot."""

from __future__ import annotations

import argparse

from ..experiments.sweep import sweep
from .common import add_model_argument, add_text_arguments, experiment_settings, floats, names
from .recovery_flags import recovery_settings
from .spec_flags import add_option_flags, given_options

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
    add_option_flags(p, skip=("n_samples", "seq_len", "seed"))
    add_text_arguments(p, "seed of the calibration windows", "cap on evaluation windows (default: all)")
    p.add_argument(
        "--recover",
        type=recovery_settings,
        default=None,
        metavar="KEY=VALUE,...",
        help="also recover every pruned point (prunekit.recover's options and mode, e.g. "
        "mode=retrain,steps=8,rank=2; a list continues after commas: train=norms,lora) and add "
        "its perplexity after recovery",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    rows = sweep(args.model, **experiment_settings(args), recover=args.recover, **given_options(args))
    out = Path(args.out)
    print((out / "sweep.md").read_text(encoding="utf-8"))
    failed = sum(1 for r in rows if r["error"])
    print(f"{len(rows)} points ({failed} failed); wrote {out / 'sweep.csv'}, sweep.md and sweep.png")
    return 0
