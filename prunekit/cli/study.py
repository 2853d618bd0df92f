"""``prunekit study``: models x methods x components x sparsities; study.csv, study.md and plots."""

from __future__ import annotations

import argparse

from .common import floats, names

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
    p.add_argument("--text", default=None, help="UTF-8 text file for calibration/eval (default: stdlib docs)")
    p.add_argument("--shifted-text", default=None, help="UTF-8 file of another domain, evaluated as a whole")
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration windows and word shuffling")
    p.add_argument("--eval-windows", type=int, default=None, help="cap on windows per evaluation text")
    p.add_argument(
        "--allow-mixed-tokenizers",
        action="store_true",
        help="let models with different tokenizers be studied together (compare relative increases only)",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from prunekit.experiments.study import study

    rows = study(
        args.models,
        args.methods,
        args.sparsities,
        components=args.components,
        structure=args.structure,
        text=args.text,
        shifted_text=args.shifted_text,
        n_samples=args.calib_samples,
        seq_len=args.seq_len,
        seed=args.seed,
        max_eval_windows=args.eval_windows,
        allow_mixed_tokenizers=args.allow_mixed_tokenizers,
        out_dir=args.out,
    )
    out = Path(args.out)
    print((out / "study.md").read_text(encoding="utf-8"))
    counts = {s: sum(1 for r in rows if r["status"] == s) for s in ("ok", "n/a", "failed")}
    print(
        f"{len(rows)} rows ({counts['ok']} ok, {counts['n/a']} n/a, {counts['failed']} failed); wrote {out}"
    )
    return 0
