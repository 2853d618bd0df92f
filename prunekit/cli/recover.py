"""``prunekit recover``: PERP recovery of a pruned model (retrain or reconstruct a few tensors, pruned
zeros kept), perplexity before and after on held-out text, and the recovered model saved to --out."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .. import api, io, models
from ..experiments.recovery_plot import plot_recovery
from ..spec import SpecError
from ..spec.recovery import MODES, build_recovery_spec
from .common import device as parse_device
from .recovery_flags import add_recovery_flags, given_recovery_options

NAME = "recover"
HELP = "recover a pruned model (PERP: biases, norms, LM head, mask-preserving LoRA) and save it"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="the pruned model: known name or local directory")
    p.add_argument("--out", required=True, help="directory for the recovered model, tokenizer and report")
    p.add_argument(
        "--dense",
        default=None,
        help="the model before pruning (--mode reconstruct): a directory, read block by block, or a name",
    )
    p.add_argument("--mode", choices=MODES, default="retrain", help="retrain (default) | reconstruct")
    p.add_argument(
        "--text", default=None, help="UTF-8 text file to train on and evaluate (default: stdlib docs)"
    )
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (cuda when available)")
    p.add_argument("--overwrite", action="store_true", help="write into an --out that is not empty")
    # data is a text file here, never a Dataset; progress bars by default, as prunekit prune shows
    add_recovery_flags(p, skip=("text_column",), defaults={"progress": True})


def run(args: argparse.Namespace) -> int:
    options = given_recovery_options(args)
    _check_request(args, options)  # every mistake before any loading
    device = parse_device(args.device)
    model, tok = models.load(args.model)
    model.to(device)
    report = api.recover(
        model, _dense(args.dense, device), data=args.text, mode=args.mode, tokenizer=tok, **options
    )
    print(report.summary())
    out = Path(args.out)
    summary = report.to_dict()
    record = {"recovery": summary, "recovery_data": args.text or "stdlib docs"}
    model_dir = Path(args.model).expanduser()
    masks = io.load_masks(model_dir) if model_dir.is_dir() else {}  # the zeros are still the pruned ones
    io.save_pretrained(model, out, tokenizer=tok, record=record, masks=masks)
    (out / "recovery.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    plot_recovery(report, out / "recovery.png")
    print(f"saved to {out}")
    return 0


def _check_request(args: argparse.Namespace, options: dict[str, Any]) -> None:
    """The options, --dense against --mode, --text and --out, checked before the model is loaded."""
    build_recovery_spec("perp", args.mode, **options)
    if args.mode == "reconstruct" and args.dense is None:
        raise SpecError("--mode reconstruct fits each block to the dense model's: pass --dense", "dense")
    if args.mode != "reconstruct" and args.dense is not None:
        raise SpecError("--dense is the reference of --mode reconstruct; retraining does not use it", "dense")
    if args.text is not None and not Path(args.text).expanduser().is_file():
        raise ValueError(f"--text {args.text!r} is not a file")
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {args.out!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise ValueError(f"--out {args.out!r} is not empty (pass --overwrite to write into it)")
    inputs = [Path(p).expanduser() for p in (args.model, args.dense) if p is not None]
    inputs = [p.resolve() for p in inputs if p.is_dir()]
    if out.resolve() in inputs:
        raise ValueError(f"--out {args.out!r} is an input of this command; write to another directory")


def _dense(dense: str | None, device) -> Any:
    """A directory as it is (recover reads it block by block), a known name loaded whole."""
    if dense is None or Path(dense).expanduser().is_dir():
        return dense
    reference, _tok = models.load(dense)
    return reference.to(device)
