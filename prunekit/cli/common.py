"""Argument helpers shared by the sub-commands."""

from __future__ import annotations

import argparse


def add_model_argument(parser: argparse.ArgumentParser, default: str | None = "smollm2-135m") -> None:
    parser.add_argument("--model", default=default, help="known model name or local HF directory")


def floats(text: str) -> list[float]:
    """``"0.2,0.5"`` -> ``[0.2, 0.5]`` (an argparse ``type``)."""
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from err


def names(text: str) -> list[str]:
    """``"wanda, flap"`` -> ``["wanda", "flap"]`` (an argparse ``type``)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def device(name: str):
    """``--device``: cpu | cuda | cuda:N | auto (CUDA when available); a missing CUDA is an error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"--device {name!r} is not a device ({err})") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this machine has no CUDA device (use cpu or auto)")
    return chosen


def add_text_arguments(parser: argparse.ArgumentParser, seed_help: str, eval_help: str) -> None:
    """Where calibration and evaluation text come from, and how it is cut into windows."""
    parser.add_argument(
        "--text", default=None, help="UTF-8 text file for calibration/eval (default: stdlib docs)"
    )
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0, help=seed_help)
    parser.add_argument("--eval-windows", type=int, default=None, help=eval_help)


def experiment_settings(args: argparse.Namespace) -> dict:
    """The keyword arguments :func:`prunekit.sweep` and :func:`prunekit.study` share, from the flags
    both commands have (methods, sparsities, structure, output folder, text and windows)."""
    return {
        "methods": args.methods,
        "sparsities": args.sparsities,
        "structure": args.structure,
        "out_dir": args.out,
        "text": args.text,
        "n_samples": args.calib_samples,
        "seq_len": args.seq_len,
        "seed": args.seed,
        "max_eval_windows": args.eval_windows,
    }
