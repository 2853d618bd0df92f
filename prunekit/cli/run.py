"""``prunekit run recipe.yaml``: load a model, validate the recipe against it, run its stages, save.

The recipe is parsed before the model is loaded and resolved against the model before the dense
perplexity is measured, so a typo costs seconds, not a pruning run. Perplexity is measured on the
held-out split of the recipe's calibration text (disjoint from the calibration windows), dense and
after every stage, so the damage of each stage is visible on its own.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from ..data import eval_windows
from ..eval import perplexity
from ..io import save_pretrained
from ..models import load
from ..recipes import check_recipe, load_recipe, recipe_calibration, run_recipe

NAME = "run"
HELP = "run a YAML recipe of pruning stages (see docs/recipes.md)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="YAML recipe file")
    parser.add_argument(
        "--model", default=None, help="known model name or local HF directory (overrides the recipe's)"
    )
    parser.add_argument(
        "--out", default=None, help="directory to save the pruned model, tokenizer and reports"
    )
    parser.add_argument("--no-eval", action="store_true", help="skip perplexity before/after")
    parser.add_argument(
        "--eval-windows", type=int, default=None, help="cap on evaluation windows (default: all)"
    )


def run(args: argparse.Namespace) -> int:

    if args.eval_windows is not None and args.eval_windows < 1:
        raise ValueError(f"--eval-windows must be >= 1, got {args.eval_windows}")
    recipe = load_recipe(args.recipe)
    name = args.model or recipe.model
    if name is None:
        raise ValueError(f"{args.recipe} names no model: pass --model")
    model, tok = load(name)
    check_recipe(model, recipe)
    ids = recipe_calibration(model, recipe, tokenizer=tok)
    spec = recipe.calibration
    print(f"{args.recipe}: {len(recipe.stages)} stage(s) on {name}; calibration {spec.source}", end="")
    print(f", {spec.n_samples} x {spec.seq_len} tokens" if ids is not None else " (not needed)")

    ppl: list[tuple[str, float]] = []  # ("dense", ...), then one entry per stage
    windows = None
    if not args.no_eval:
        windows = eval_windows(
            tok, seq_len=spec.seq_len, max_windows=args.eval_windows, source=spec.data_source
        )
        ppl.append(("dense", perplexity(model, windows, progress=True)))
        shape = f"{windows.shape[0]} windows x {windows.shape[1]} tokens"
        print(f"perplexity on {shape}: dense {ppl[0][1]:.3f}")

    def after_stage(stage, report) -> None:
        print(f"\n== stage {stage.index + 1}/{len(recipe.stages)}: {stage.name} ==")
        print(report)
        if windows is not None:
            before = ppl[-1][1]
            ppl.append((stage.name, perplexity(model, windows, progress=True)))
            print(f"perplexity: {before:.3f} -> {ppl[-1][1]:.3f} ({ppl[-1][1] / ppl[0][1]:.2f}x dense)")

    reports = run_recipe(
        model, recipe, calibration=ids, tokenizer=tok, progress=True, after_stage=after_stage
    )
    if ppl:
        print("\nperplexity: " + " -> ".join(f"{k} {v:.3f}" for k, v in ppl))
    if args.out is not None:
        out = Path(args.out)
        save_pretrained(model, out, tokenizer=tok, record=reports)
        shutil.copyfile(args.recipe, out / "recipe.yaml")
        if ppl:
            summary = {
                "perplexity": [{"after": k, "ppl": v} for k, v in ppl],
                "eval_windows": int(windows.shape[0]),
                "seq_len": int(windows.shape[1]),
            }
            (out / "recipe_eval.json").write_text(json.dumps(summary, indent=2))
        print(f"saved to {out}")
    return 0
