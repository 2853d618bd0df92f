"""Structured pruning of SmolLM2-135M: quality, size and CPU forward speed against the dense model.

Each point prunes a fresh copy and measures, in the same process and interleaved with the dense
model so both see the same machine load: perplexity (default text's held-out split, and Austen's
*Emma* from ``../shared/data`` when present), parameters, and the median forward time for batch
1 x 512 and 8 x 512 tokens (no KV cache).

    python benchmarks/structured.py
    python benchmarks/structured.py --points flap:global:0.5 --repeats 3 --eval-windows 8

``--same-work`` instead runs the fixed protocol of the reference code's published figures (pydoc
topics calibration, 32 x 256 windows of *Emma*), so that prunekit can be compared point for point:

    python benchmarks/structured.py --same-work
    python benchmarks/structured.py --same-work --points flap:uniform:0.2:bias_compensation=True
"""

from __future__ import annotations

import argparse
import ast
import copy
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

AUSTEN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "austen_emma.txt"
DEFAULT_POINTS = [
    f"{m}:{s}:{r}"
    for r in (0.2, 0.3, 0.5)
    for m, s in (
        ("flap", "global"),
        ("flap", "uniform"),
        ("wanda-sp", "uniform"),
        ("magnitude-sp", "uniform"),
        ("seap", "logistic"),
    )
]
SAME_WORK_POINTS = ["flap:global:0.2", "flap:uniform:0.2", "wanda-sp:uniform:0.2", "flap:global:0.5"]
SAME_WORK_WINDOWS, SAME_WORK_LEN, SAME_WORK_BATCH = 32, 256, 8
# Figures of the reference code on this same work (SmolLM2-135M, protocol above), as reported in the
# project's issue: (method, search, ratio) -> (label, perplexity, % of block Linear weights removed,
# "q heads, KV heads, MLP channels kept" where reported).
REFERENCE = {
    ("dense", "", 0.0): ("dense", 36.52, 0.0, "270/270, 90/90, 46,080/46,080"),
    ("flap", "global", 0.2): ("FLAP 20 % AL-AM", 97.86, 20.6, "242/270, 89/90, 34,653/46,080"),
    ("flap", "uniform", 0.2): ("FLAP 20 % UL-UM", 107.90, 17.1, ""),
    ("wanda-sp", "uniform", 0.2): ("Wanda-sp 20 %", 99.06, 17.1, ""),
    ("flap", "global", 0.5): ("FLAP 50 % AL-AM", 1755.0, 49.9, ""),
}


@torch.inference_mode()
def forward_seconds(model, batch: int, length: int, repeats: int) -> float:
    ids = torch.randint(10, 1000, (batch, length), generator=torch.Generator().manual_seed(0))
    model(ids[:, :16], use_cache=False)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(ids, use_cache=False)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_default(args: argparse.Namespace) -> None:
    """Quality, size and speed of each point against the dense model (the default run)."""
    import prunekit
    from prunekit.data import calibration_ids, eval_windows
    from prunekit.eval import perplexity
    from prunekit.models import load

    torch.manual_seed(0)
    dense, tok = load("smollm2-135m")
    calibration = calibration_ids(tok, n_samples=args.calib, seq_len=args.seq_len)
    texts = {"pydoc": eval_windows(tok, seq_len=args.seq_len, max_windows=args.eval_windows)}
    if AUSTEN.exists():
        texts["austen"] = eval_windows(
            tok, seq_len=args.seq_len, max_windows=args.eval_windows, source=str(AUSTEN), calib_fraction=0.5
        )
    dense_params = sum(p.numel() for p in dense.parameters())
    dense_ppl = {k: perplexity(dense, w) for k, w in texts.items()}
    cols = [
        "point",
        *[f"ppl {k}" for k in texts],
        "params",
        "params / dense",
        "prune s",
        "speed-up 1x512",
        "speed-up 8x512",
    ]
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    print(
        "| dense | "
        + " | ".join(f"{v:.2f}" for v in dense_ppl.values())
        + f" | {dense_params / 1e6:.1f}M | 1.00 | 0 | 1.00 | 1.00 |",
        flush=True,
    )
    for point in args.points or DEFAULT_POINTS:
        method, search, ratio = point.split(":")
        model = copy.deepcopy(dense)
        t0 = time.perf_counter()
        prunekit.prune(
            model,
            method=method,
            sparsity=float(ratio),
            structure="structured",
            calibration=calibration,
            structure_search=search,
        )
        seconds = time.perf_counter() - t0
        ppl = {k: perplexity(model, w) for k, w in texts.items()}
        speed = []
        for batch in (1, 8):
            d, p = [], []
            for _ in range(2):  # interleave so that load changes hit both
                d.append(forward_seconds(dense, batch, 512, args.repeats))
                p.append(forward_seconds(model, batch, 512, args.repeats))
            speed.append(min(d) / min(p))
        params = sum(x.numel() for x in model.parameters())
        print(
            f"| {point} | "
            + " | ".join(f"{v:.2f}" for v in ppl.values())
            + f" | {params / 1e6:.1f}M | {params / dense_params:.2f} | {seconds:.0f} | {speed[0]:.2f} | "
            f"{speed[1]:.2f} |",
            flush=True,
        )
        del model
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, python {sys.version.split()[0]}")


def parse_point(point: str) -> tuple[str, str, float, dict[str, object]]:
    """``method:search:ratio[:key=value,...]`` -> its parts; values are Python literals or raw strings."""
    method, search, ratio, *rest = point.split(":", 3)
    extra: dict[str, object] = {}
    for item in filter(None, rest[0].split(",") if rest else []):
        key, _, raw = item.partition("=")
        try:
            extra[key.strip()] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            extra[key.strip()] = raw.strip()
    return method, search, float(ratio), extra


def tokens(tok: PreTrainedTokenizerBase, text: str) -> torch.Tensor:
    """The whole text as one 1-D LongTensor, without BOS/EOS, so windows are plain running text."""
    return torch.tensor(tok(text, add_special_tokens=False).input_ids, dtype=torch.long)


def same_work_calibration(tok: PreTrainedTokenizerBase) -> torch.Tensor:
    """32 x 256 windows of the pydoc topics at seeded random offsets: the reference's calibration."""
    from pydoc_data.topics import topics

    ids = tokens(tok, "\n\n".join(topics[k] for k in sorted(topics)))
    starts = torch.randint(
        0, len(ids) - SAME_WORK_LEN + 1, (SAME_WORK_WINDOWS,), generator=torch.Generator().manual_seed(0)
    )
    return torch.stack([ids[s : s + SAME_WORK_LEN] for s in starts.tolist()])


def same_work_eval(tok: PreTrainedTokenizerBase, path: Path) -> torch.Tensor:
    """The first 32 non-overlapping 256-token windows of the eval file, as the reference scores."""
    ids = tokens(tok, path.read_text(encoding="utf-8"))
    need = SAME_WORK_WINDOWS * SAME_WORK_LEN
    if len(ids) < need:
        sys.exit(f"{path} has {len(ids)} tokens; the same-work protocol needs {need}")
    return ids[:need].view(SAME_WORK_WINDOWS, SAME_WORK_LEN)


@torch.inference_mode()
def window_perplexity(model: nn.Module, windows: torch.Tensor) -> float:
    """exp(mean next-token NLL over all 32 x 255 predictions); written out so the protocol is explicit."""
    nll, count = 0.0, 0
    for batch in windows.split(SAME_WORK_BATCH):
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        targets = batch[:, 1:]
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")
        nll += float(loss.double())
        count += targets.numel()
    return math.exp(nll / count)


def shape_counts(model: nn.Module) -> dict[str, int]:
    """Block Linear weights and kept q heads / KV heads / MLP channels: what structured pruning removes."""
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    layers = model.model.layers
    return {
        "weights": sum(m.weight.numel() for m in layers.modules() if isinstance(m, nn.Linear)),
        "q": sum(layer.self_attn.q_proj.out_features // head_dim for layer in layers),
        "kv": sum(layer.self_attn.k_proj.out_features // head_dim for layer in layers),
        "mlp": sum(layer.mlp.gate_proj.out_features for layer in layers),
    }


def same_work_row(label: str, ppl: float, counts: dict[str, int], dense: dict[str, int], secs: float) -> str:
    """One measured table row (ratio to the reference is added by the caller)."""
    removed = 100 * (1 - counts["weights"] / dense["weights"])
    kept = " | ".join(f"{counts[k]:,}/{dense[k]:,}" for k in ("q", "kv", "mlp"))
    return f"| {label} | {ppl:.2f} | {removed:.1f} % | {kept} | {secs:.0f}"


def git_commit() -> str:
    """Short commit of the checkout, so figures can be traced to code; empty when git is unavailable."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def run_same_work(args: argparse.Namespace) -> None:
    """The reference code's protocol point for point, then its figures for side-by-side comparison."""
    import prunekit
    from prunekit.models import load

    eval_file = Path(args.eval_file)
    if not eval_file.is_file():
        sys.exit(f"--same-work: eval file {eval_file} does not exist (pass --eval-file)")
    dense, tok = load("smollm2-135m")
    calibration = same_work_calibration(tok)
    windows = same_work_eval(tok, eval_file)
    dense_counts = shape_counts(dense)
    dense_ppl = window_perplexity(dense, windows)
    cols = ["point", "ppl", "block Linear removed", "q heads", "KV heads", "MLP channels", "prune s"]
    print("| " + " | ".join([*cols, "ppl / reference"]) + " |")
    print("|" + "|".join("---" for _ in range(len(cols) + 1)) + "|")
    ratio = dense_ppl / REFERENCE["dense", "", 0.0][1]
    print(same_work_row("dense", dense_ppl, dense_counts, dense_counts, 0) + f" | {ratio:.2f} |", flush=True)
    for point in args.points or SAME_WORK_POINTS:
        method, search, sparsity, extra = parse_point(point)
        model = copy.deepcopy(dense)
        t0 = time.perf_counter()
        prunekit.prune(
            model,
            method=method,
            sparsity=sparsity,
            structure="structured",
            calibration=calibration,
            structure_search=search,
            **extra,
        )
        seconds = time.perf_counter() - t0
        ppl = window_perplexity(model, windows)
        ref = REFERENCE.get((method, search, sparsity))
        ratio_cell = f"{ppl / ref[1]:.2f}" if ref else ""
        print(
            same_work_row(point, ppl, shape_counts(model), dense_counts, seconds) + f" | {ratio_cell} |",
            flush=True,
        )
        del model
    print("\nFigures of the reference code on this same work (from the project's issue):\n")
    print("| reference point | ppl | block Linear removed | q heads, KV heads, MLP channels kept |")
    print("|---|---|---|---|")
    for label, ppl, removed, kept in REFERENCE.values():
        print(f"| {label} | {ppl:.2f} | {removed:.1f} % | {kept} |")
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, commit {git_commit() or '?'}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--points", nargs="*", default=None, help="method:search:ratio[:key=value,...] (extras: --same-work)"
    )
    parser.add_argument("--calib", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--eval-windows", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--same-work", action="store_true", help="run the reference code's fixed protocol instead (see above)"
    )
    parser.add_argument("--eval-file", default=str(AUSTEN), help="--same-work evaluation text")
    args = parser.parse_args()
    if args.same_work:
        run_same_work(args)
    else:
        run_default(args)


if __name__ == "__main__":
    main()
