"""BESA against Wanda and SparseGPT on SmolLM2-135M at 50 %: quality, prune time and peak memory.

Calibration is the reference protocol's sampler (the stdlib pydoc topics in sorted key order, joined
by blank lines, ``--calib`` windows of 256 tokens at ``torch.randint`` offsets seeded 0; 32 is the
same-work calibration of the issues' reference figures). Evaluation: the default text's held-out split
(``prunekit.data.eval_windows``, in-domain), the same-work windows (the first 32 non-overlapping
256-token windows of ``../shared/data/austen_emma.txt``, where the reference Wanda gives 75.81 and the
reference SparseGPT 90.74, dense 36.52), and the held-out second half of *Emma* (the held-out
evaluations capped at ``--eval-windows`` windows of 256 tokens). Every point runs in its own
subprocess so that its peak RSS is its own.

    python benchmarks/besa.py                                   # dense, wanda, sparsegpt, besa
    python benchmarks/besa.py --calib 128 --points wanda "besa:lr=0.1"
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EMMA = HERE.parents[1] / "shared" / "data" / "austen_emma.txt"
REFERENCE = {"dense": 36.52, "wanda": 75.81, "sparsegpt": 90.74}
DEFAULT_POINTS = ["dense", "wanda", "sparsegpt", "besa:lr=0.1"]


def parse_point(point: str) -> tuple[str | None, dict]:
    """``dense``, ``method`` or ``method:key=value,key=value`` (values as Python literals)."""
    import ast

    if point == "dense":
        return None, {}
    method, _, rest = point.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, _, raw = item.partition("=")
        try:
            options[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            options[key] = raw
    return method, options


def run_point(point: str, calib: int, windows: int) -> dict:
    import torch

    sys.path.insert(0, str(HERE))
    from structured import same_work_eval, tokens, window_perplexity

    import prunekit
    from prunekit.data import eval_windows
    from prunekit.eval import perplexity
    from prunekit.models import load

    method, options = parse_point(point)
    model, tok = load("smollm2-135m")
    out: dict = {"point": point, "calib": calib, "prune_s": 0.0}
    if method is not None:
        from pydoc_data.topics import topics

        ids = tokens(tok, "\n\n".join(topics[k] for k in sorted(topics)))
        starts = torch.randint(0, len(ids) - 256 + 1, (calib,), generator=torch.Generator().manual_seed(0))
        calibration = torch.stack([ids[s : s + 256] for s in starts.tolist()])
        t0 = time.perf_counter()
        report = prunekit.prune(model, method=method, sparsity=0.5, calibration=calibration, **options)
        out["prune_s"] = time.perf_counter() - t0
        out["achieved"] = report.achieved
        shares = list(report.layer_sparsity.values())
        out["matrix_share_range"] = [min(shares), max(shares)]
    out["ppl_default"] = perplexity(model, eval_windows(tok, seq_len=256, max_windows=windows))
    if EMMA.exists():
        out["ppl_emma_same_work"] = window_perplexity(model, same_work_eval(tok, EMMA))
        held = eval_windows(tok, seq_len=256, max_windows=windows, source=str(EMMA), calib_fraction=0.5)
        out["ppl_emma_second_half"] = perplexity(model, held)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", nargs="*", default=DEFAULT_POINTS)
    parser.add_argument("--calib", type=int, default=32, help="calibration windows of 256 tokens")
    parser.add_argument("--eval-windows", type=int, default=64, help="cap of the held-out evaluations")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_point(args.one, args.calib, args.eval_windows)))
        return
    rows = []
    for point in args.points:
        cmd = [sys.executable, __file__, "--one", point, "--calib", str(args.calib)]
        cmd += ["--eval-windows", str(args.eval_windows)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"done {point}: {rows[-1]}", file=sys.stderr, flush=True)
    head = "| point | calib | ppl default held-out | ppl Emma same-work | / reference | ppl Emma 2nd half |"
    print(head + " matrix shares | prune s | peak RSS MB |")
    print("|" + "---|" * 9)
    for r in rows:
        method = parse_point(r["point"])[0] or "dense"
        ref = REFERENCE.get(method)
        emma = r.get("ppl_emma_same_work")
        cells = [
            r["point"], str(r["calib"]) if method != "dense" else "-", f"{r['ppl_default']:.2f}",
            f"{emma:.2f}" if emma else "-", f"{emma / ref:.3f}" if emma and ref else "-",
            f"{r['ppl_emma_second_half']:.2f}" if emma else "-",
            "{:.3f}-{:.3f}".format(*r["matrix_share_range"]) if "matrix_share_range" in r else "-",
            f"{r['prune_s']:.0f}", f"{r['peak_rss_mb']:.0f}",
        ]  # fmt: skip
        print("| " + " | ".join(cells) + " |")
    import torch

    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
