"""``prunekit zeroshot``: multiple-choice accuracy on local JSONL tasks (optionally lm-eval tasks)."""

from __future__ import annotations

import argparse

from ..eval.lm_eval import evaluate_lm_eval
from ..eval.zeroshot import evaluate_tasks, load_task, summary_table
from ..models import load

NAME = "zeroshot"
HELP = "zero-shot multiple-choice accuracy on JSONL task files ({context, choices, label} per line)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help="known model name or local HF directory")
    p.add_argument("--tasks", nargs="*", default=[], help="JSONL files, one item per line")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--limit", type=int, default=None, help="score only the first N items of each task")
    p.add_argument("--json", default=None, help="also write the full results (per item) to this file")
    p.add_argument(
        "--lm-eval",
        nargs="*",
        default=[],
        metavar="TASK",
        help='lm-evaluation-harness task names (needs pip install "prunekit[eval]" and the task data)',
    )


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    if not args.tasks and not args.lm_eval:
        raise ValueError("name at least one task: --tasks FILE.jsonl ... or --lm-eval TASK ...")
    for task in args.tasks:
        load_task(task)  # a malformed file fails before the model loads
    model, tok = load(args.model)
    results: dict = {}
    if args.tasks:
        results = evaluate_tasks(
            model, tok, args.tasks, batch_size=args.batch_size, limit=args.limit, progress=True
        )
        print(f"{args.model}: zero-shot accuracy (acc: sum of log-probs; acc_norm: per character)")
        print(summary_table(results))
    if args.lm_eval:
        harness = evaluate_lm_eval(model, tok, args.lm_eval, batch_size=args.batch_size, limit=args.limit)
        for name, metrics in harness["results"].items():
            shown = {k: v for k, v in metrics.items() if isinstance(v, float)}
            print(f"lm-eval {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()))
        results["lm_eval"] = harness["results"]
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0
