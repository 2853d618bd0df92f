"""``prunekit study``: models x methods x components x sparsities; study.csv, study.md and plots."""

from __future__ import annotations

import argparse

from ..experiments.study import study
from .common import add_text_arguments, experiment_settings, floats, names

NAME = "study"
HELP = "prune several models per component with several methods and sparsities; compare the damage"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", nargs="+", required=True, help="local HF model directories (or known names)")
    p.add_argument("--methods", type=names, required=True, help="comma-separated, e.g. wanda,flap")
    p.add_argument("--sparsities", type=floats, required=True, help="comma-separated, e.g. 0.1,0.3,0.5")
    p.add_argument(
        "--components",
        type=names,
        default=None,
        help="comma-separated component names (all, attention, mlp, in_proj, x_proj/dt_proj, out_proj, "
        "ssm_channels, ssm_heads, state), 'family:name' for one family only; default: all of each family's",
    )
    p.add_argument("--out", required=True, help="directory for study.csv, study.md and the plots")
    p.add_argument(
        "--structure", default=None, help="for methods that support several (default unstructured)"
    )
    p.add_argument("--shifted-text", default=None, help="UTF-8 file of another domain, evaluated as a whole")
    add_text_arguments(
        p, "seed of the calibration windows and word shuffling", "cap on windows per evaluation text"
    )
    p.add_argument(
        "--allow-mixed-tokenizers",
        action="store_true",
        help="let models with different tokenizers be studied together (compare relative increases only)",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    rows = study(
        args.models,
        components=args.components,
        shifted_text=args.shifted_text,
        allow_mixed_tokenizers=args.allow_mixed_tokenizers,
        **experiment_settings(args),
    )
    out = Path(args.out)
    print((out / "study.md").read_text(encoding="utf-8"))
    counts = {s: sum(1 for r in rows if r["status"] == s) for s in ("ok", "n/a", "failed")}
    print(
        f"{len(rows)} rows ({counts['ok']} ok, {counts['n/a']} n/a, {counts['failed']} failed); wrote {out}"
    )
    return 0
