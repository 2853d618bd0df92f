"""``prunekit prune``: prune a model, report per-layer sparsity and perplexity, optionally save it."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

from .. import api, io, models
from ..data import calibration_ids, eval_windows
from ..engine import distributed
from ..engine.offload import offload_prune
from ..eval import js_divergence, perplexity
from .common import add_model_argument
from .common import device as parse_device
from .spec_flags import add_option_flags, spec_from_args

NAME = "prune"
HELP = "prune a model and report per-layer sparsity and perplexity"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    p.add_argument("--method", default="magnitude")
    p.add_argument("--sparsity", type=float, default=None, help="default 0.5 (N:M fixes it at N/M)")
    p.add_argument(
        "--structure", default=None, help="unstructured | structured | N:M (e.g. 2:4); default: the method's"
    )
    p.add_argument("--targets", nargs="*", default=None, help="names, suffixes or re: patterns (or roles)")
    p.add_argument("--ignore", nargs="*", default=None)
    add_option_flags(p)
    p.add_argument("--text", default=None, help="UTF-8 text file for calibration/eval (default: stdlib docs)")
    p.add_argument("--eval-windows", type=int, default=None, help="cap on evaluation windows (default: all)")
    p.add_argument("--no-eval", action="store_true", help="skip perplexity before/after")
    p.add_argument("--out", default=None, help="directory to save the pruned model, tokenizer and report")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (cuda when available)")
    p.add_argument(
        "--dtype", choices=("float32", "bfloat16", "float16"), default="float32", help="weights' dtype"
    )
    p.add_argument(
        "--offload",
        action="store_true",
        help="larger than memory: read --model (a local safetensors directory) block by block from disk "
        "and write the pruned model to --out shard by shard (unstructured / N:M methods)",
    )
    p.add_argument(
        "--distributed",
        action="store_true",
        help="data-parallel calibration under torchrun (gloo on CPU, NCCL on GPU); implied when "
        "torchrun launches more than one process. Rank 0 evaluates and saves",
    )


def run(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    spec = dataclasses.replace(spec_from_args(args), progress=True)  # every mistake before any loading
    device = parse_device(args.device)
    launched = distributed.init(device)
    if args.distributed and not launched:
        raise ValueError("--distributed needs a torchrun launch with more than one process (WORLD_SIZE > 1)")
    if args.offload:
        return _prune_offloaded(args, spec, device)
    main_rank = distributed.rank() == 0
    model, tok = models.load(args.model, dtype=getattr(torch, args.dtype))
    model.to(device)
    calibration = _calibration(tok, spec, args.text)
    windows = None
    if not args.no_eval and main_rank:
        windows = _windows(tok, spec, args)
        dense_ppl = perplexity(model, windows, progress=True)
        dense = copy.deepcopy(model)  # kept for the JS divergence
    report = api.prune_with_spec(model, spec, calibration)
    if not main_rank:
        return 0  # every rank holds the same pruned model; rank 0 reports and saves
    print(report)
    summary = report.to_dict()
    if windows is not None:
        pruned_ppl = perplexity(model, windows, progress=True)
        js = js_divergence(dense, model, windows, progress=True)
        del dense
        summary.update(
            ppl_dense=dense_ppl, ppl_pruned=pruned_ppl, js_nats=js, eval_tokens=int(windows.numel())
        )
        print(
            f"perplexity on {windows.shape[0]} windows x {windows.shape[1]} tokens: "
            f"dense {dense_ppl:.3f} -> pruned {pruned_ppl:.3f} ({pruned_ppl / dense_ppl:.2f}x); "
            f"JS divergence to dense {js:.4f} nats"
        )
    if args.out:
        out = Path(args.out)
        calibration_source = {
            "calibration": args.text or "stdlib docs",
            "calib_samples": spec.calibration.n_samples,
            "seq_len": spec.calibration.seq_len,
        }
        io.save_pretrained(model, out, tokenizer=tok, record=calibration_source, report=report)
        (out / "prune_report.json").write_text(json.dumps(summary, indent=2))
        print(f"saved to {out}")
    return 0


def _calibration(tokenizer, spec, text: str | None):

    cal = spec.calibration
    return calibration_ids(
        tokenizer, n_samples=cal.n_samples, seq_len=cal.seq_len, seed=cal.seed, source=text
    )


def _windows(tokenizer, spec, args: argparse.Namespace):

    seq_len = spec.calibration.seq_len
    return eval_windows(tokenizer, seq_len=seq_len, max_windows=args.eval_windows, source=args.text)


def _prune_offloaded(args: argparse.Namespace, spec, device) -> int:

    if not args.out:
        raise ValueError("--offload writes the pruned model shard by shard: it needs --out")
    if not Path(args.model).expanduser().is_dir():
        raise ValueError("--offload reads a local model directory block by block: --model must be one")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(Path(args.model).expanduser(), local_files_only=True)
    result = offload_prune(args.model, args.out, spec, _calibration(tok, spec, args.text), device=device)
    if distributed.rank() != 0:
        return 0
    print(
        f"{result.method} {result.structure} {result.sparsity:g}: {result.achieved:.4f} of the targeted "
        f"weights pruned in {result.seconds:.1f} s; written shard by shard to {result.directory}"
    )
    return 0
