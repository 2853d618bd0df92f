"""PERP recovery on SmolLM2-135M: perplexity won back, trainable share and CPU time, per pruning point.

Each point prunes the model (calibration: 32 windows of 256 tokens from the default text's calibration
split, ``prunekit.data.calibration_ids``), measures perplexity, recovers with :func:`prunekit.recover`
(training text: the same calibration split, ``data="default"``), and measures again. Evaluation: the
default text's held-out split (in-domain, ``--eval-windows`` windows) and the first 32 non-overlapping
256-token windows of ``../shared/data/austen_emma.txt`` (prose, the issues' same-work windows). Every
point runs in its own subprocess; CPU time is the process's user + system time of the recover call.

A point is ``method:sparsity:structure`` (or ``dense``); every pruned point is recovered, from the same
pruned model, by each of ``--recoveries`` (``mode:key=value,...``):

    python benchmarks/recovery.py                                  # the issue's table, both modes
    python benchmarks/recovery.py --points wanda:0.5:unstructured --recoveries retrain:steps=64,lora=scale
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EMMA = HERE.parents[1] / "shared" / "data" / "austen_emma.txt"
PRUNES = ["magnitude:0.5:unstructured", "wanda:0.5:unstructured", "sparsegpt:0.5:unstructured",
          "wanda:0.5:2:4", "flap:0.2:structured"]  # fmt: skip
DEFAULT_POINTS = ["dense", *PRUNES]
#: the settings recorded in BENCHMARKS.md: rank 3 keeps the trainable share under 1 % on SmolLM2
DEFAULT_RECOVERIES = ["retrain:rank=3,steps=16,gradient_checkpointing=False", "reconstruct:rank=3,steps=16"]


def parse_options(opts: str) -> dict:
    options = {}
    for item in filter(None, opts.split(",")):
        key, _, raw = item.partition("=")
        try:
            options[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            options[key] = raw
    return options


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_point(point: str, windows: int, recoveries: list[str]) -> list[dict]:
    sys.path.insert(0, str(HERE))
    from structured import same_work_eval, window_perplexity

    import prunekit
    from prunekit.data import calibration_ids, eval_windows
    from prunekit.eval import perplexity
    from prunekit.models import load

    model, tok = load("smollm2-135m")
    held = eval_windows(tok, seq_len=256, max_windows=windows)
    emma = same_work_eval(tok, EMMA) if EMMA.exists() else None

    def measure(m, out: dict, tag: str) -> None:
        out[f"ppl_default_{tag}"] = perplexity(m, held)
        if emma is not None:
            out[f"ppl_emma_{tag}"] = window_perplexity(m, emma)

    base: dict = {"point": point}
    if point != "dense":
        method, sparsity, structure = point.split(":", 2)
        dense = copy.deepcopy(model)
        calibration = calibration_ids(tok, 32, 256, 0)
        prunekit.prune(
            model, method=method, sparsity=float(sparsity), structure=structure, calibration=calibration
        )
    measure(model, base, "before")
    rows = [dict(base, mode="none")]
    for recovery in recoveries if point != "dense" else []:
        mode, _, opts = recovery.partition(":")
        work = copy.deepcopy(model)
        out = dict(base, mode=recovery)
        kwargs = {"dense": dense} if mode == "reconstruct" else {}
        t0, c0 = time.perf_counter(), cpu_seconds()
        options = parse_options(opts)
        report = prunekit.recover(
            work, data="default", mode=mode, tokenizer=tok, eval_windows=0, **kwargs, **options
        )
        out["recover_s"], out["recover_cpu_s"] = time.perf_counter() - t0, cpu_seconds() - c0
        out["share"], out["trainable"], out["steps"] = report.share, report.trainable, report.steps
        out["loss_first_last"] = [report.losses[0], report.losses[-1]]
        measure(work, out, "after")
        rows.append(out)
        del work
    for row in rows:
        row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", nargs="*", default=DEFAULT_POINTS)
    parser.add_argument("--recoveries", nargs="*", default=DEFAULT_RECOVERIES, help="mode:key=value,...")
    parser.add_argument("--eval-windows", type=int, default=16, help="held-out windows of the default text")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_point(args.one, args.eval_windows, args.recoveries)))
        return
    rows = []
    for point in args.points:
        cmd = [sys.executable, __file__, "--one", point, "--eval-windows", str(args.eval_windows)]
        cmd += ["--recoveries", *args.recoveries]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            print(f"FAILED {point}:\n{done.stderr[-3000:]}", file=sys.stderr, flush=True)
            continue
        rows += json.loads(done.stdout.strip().splitlines()[-1])
        print(f"done {point}: {rows[-1]}", file=sys.stderr, flush=True)
    print_table(rows)


def pair(r: dict, key: str) -> str:
    before, after = r.get(f"ppl_{key}_before"), r.get(f"ppl_{key}_after")
    if before is None:
        return "-"
    return f"{before:.2f}" + (f" → {after:.2f}" if after is not None else "")


def print_table(rows: list[dict]) -> None:
    import math

    import torch

    dense = next((r for r in rows if r["point"] == "dense"), None)
    print(
        "| point | recovery | trainable % | recover CPU min | ppl default before → after "
        "| ppl Emma before → after | Emma log-gap recovered | peak RSS MB |"
    )
    print("|" + "---|" * 8)
    for r in rows:
        gap = "-"
        if dense and "ppl_emma_after" in r:
            lost = math.log(r["ppl_emma_before"]) - math.log(dense["ppl_emma_before"])
            won = math.log(r["ppl_emma_before"]) - math.log(r["ppl_emma_after"])
            gap = f"{won / lost:.2f}" if lost > 0 else "-"
        share = f"{100 * r['share']:.3f}" if "share" in r else "-"
        cpu = f"{r['recover_cpu_s'] / 60:.1f}" if "recover_cpu_s" in r else "-"
        cells = [r["point"], r["mode"], share, cpu, pair(r, "default"), pair(r, "emma"), gap]
        print("| " + " | ".join(cells) + f" | {r['peak_rss_mb']:.0f} |")
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
