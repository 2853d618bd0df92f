"""Unstructured and N:M pruning of SmolLM2-135M: quality, time and memory per method, side by side.

Every point runs in its own subprocess so that peak RSS (``ru_maxrss``) belongs to that point alone;
the dense model is evaluated the same way. Calibration: ``--calib`` windows of ``--seq-len`` tokens
from the default text's calibration split. Evaluation: the default text's held-out split (in-domain
for the calibration) and, when present, ``../shared/data/austen_emma.txt`` (prose, out of domain).

    python benchmarks/unstructured.py                # the full table (about an hour on 2 CPU cores)
    python benchmarks/unstructured.py --points wanda:0.5 magnitude:2:4 --eval-windows 8
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

AUSTEN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "austen_emma.txt"

DEFAULT_POINTS = [
    "dense",
    "magnitude:0.5",
    "wanda:0.5",
    "sparsegpt:0.5",
    "gblm:0.5",
    "magnitude:2:4",
    "wanda:2:4",
    "sparsegpt:2:4",
    "gblm:2:4",
    "magnitude:4:8",
    "wanda:4:8",
    "sparsegpt:4:8",
    "gblm:4:8",
    "wanda:0.7",
    "wanda:0.7:owl",
]


def parse_point(point: str) -> dict:
    """``method:sparsity[:owl]`` or ``method:N:M`` or ``dense``."""
    if point == "dense":
        return {"method": None}
    parts = point.split(":")
    method = parts[0]
    if len(parts) == 3 and parts[2] != "owl":
        return {
            "method": method,
            "sparsity": 0.5,
            "structure": f"{parts[1]}:{parts[2]}",
            "allocation": "uniform",
        }
    allocation = "owl" if len(parts) == 3 else "uniform"
    return {
        "method": method,
        "sparsity": float(parts[1]),
        "structure": "unstructured",
        "allocation": allocation,
    }


def run_point(args) -> dict:
    import copy

    import torch

    import prunekit
    from prunekit.data import calibration_ids, eval_windows
    from prunekit.eval import js_divergence, perplexity
    from prunekit.models import load

    torch.manual_seed(0)
    spec = parse_point(args.one)
    model, tok = load("smollm2-135m")
    evals = {"pydoc": eval_windows(tok, seq_len=args.seq_len, max_windows=args.eval_windows)}
    if AUSTEN.exists():
        evals["austen"] = eval_windows(
            tok, seq_len=args.seq_len, max_windows=args.eval_windows, source=str(AUSTEN), calib_fraction=0.5
        )
    out = {"point": args.one, "prune_s": 0.0}
    dense = None
    if spec["method"] is not None:
        dense = copy.deepcopy(model)
        calibration = calibration_ids(tok, n_samples=args.calib, seq_len=args.seq_len, seed=0)
        t0 = time.perf_counter()
        report = prunekit.prune(
            model,
            method=spec["method"],
            sparsity=spec["sparsity"],
            structure=spec["structure"],
            calibration=calibration,
            allocation=spec["allocation"],
        )
        out["prune_s"] = time.perf_counter() - t0
        out["achieved"] = report.achieved
        if report.errors:
            out["mean_rel_error"] = sum(report.errors.values()) / len(report.errors)
    for name, windows in evals.items():
        out[f"ppl_{name}"] = perplexity(model, windows)
        if dense is not None:
            out[f"js_{name}"] = js_divergence(dense, model, windows)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", nargs="*", default=DEFAULT_POINTS)
    parser.add_argument("--calib", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument(
        "--eval-windows", type=int, default=None, help="cap per evaluation text (default: all)"
    )
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_point(args)))
        return
    rows = []
    for point in args.points:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            point,
            "--calib",
            str(args.calib),
            "--seq-len",
            str(args.seq_len),
        ]
        if args.eval_windows:
            cmd += ["--eval-windows", str(args.eval_windows)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"done {point}: {rows[-1]}", file=sys.stderr, flush=True)
    has_austen = "ppl_austen" in rows[0]
    dense_rss = next((r["peak_rss_mb"] for r in rows if r["point"] == "dense"), None)
    head = "| point | ppl pydoc (in-domain) | JS pydoc |"
    head += " ppl Austen (prose) | JS Austen |" if has_austen else ""
    head += " prune s | peak RSS MB | RSS / dense |"
    print(head)
    print("|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|")
    for r in rows:
        cells = [r["point"], f"{r['ppl_pydoc']:.2f}", f"{r.get('js_pydoc', 0.0):.4f}"]
        if has_austen:
            cells += [f"{r['ppl_austen']:.2f}", f"{r.get('js_austen', 0.0):.4f}"]
        ratio = f"{r['peak_rss_mb'] / dense_rss:.2f}" if dense_rss else "-"
        cells += [f"{r['prune_s']:.1f}", f"{r['peak_rss_mb']:.0f}", ratio]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
