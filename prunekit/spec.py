"""The typed, validated request every entry point builds (to be completed)."""

from __future__ import annotations

from typing import Any

import torch

from .methods.select import NM


def validate_calibration(
    calibration: Any, model: torch.nn.Module, opts: dict | None = None
) -> torch.Tensor | None:
    """Token ids as a LongTensor ``[N, L]`` whose ids exist in the model's vocabulary.

    A list of strings or a ``datasets.Dataset`` is tokenized first (``opts`` carries ``tokenizer``,
    ``n_samples``, ``seq_len``, ``seed`` and ``text_column``).
    """
    if calibration is None:
        return None
    if not isinstance(calibration, torch.Tensor) and (
        hasattr(calibration, "column_names")
        or (
            isinstance(calibration, (list, tuple))
            and calibration
            and all(isinstance(t, str) for t in calibration)
        )
    ):
        from .data import calibration_from_texts

        opts = opts or {}
        calibration = calibration_from_texts(
            calibration,
            opts.get("tokenizer"),
            n_samples=opts.get("n_samples", 32),
            seq_len=opts.get("seq_len", 256),
            seed=opts.get("seed", 0),
            text_column=opts.get("text_column", "text"),
        )
    if not isinstance(calibration, torch.Tensor):
        raise TypeError(
            f"calibration must be a LongTensor of token ids [N, L], got {type(calibration).__name__}"
        )
    if calibration.dtype != torch.long:
        raise TypeError(f"calibration must hold int64 token ids, got dtype {calibration.dtype}")
    if calibration.dim() != 2 or calibration.shape[0] < 1 or calibration.shape[1] < 1:
        raise ValueError(f"calibration must have shape [N, L] with N, L >= 1, got {tuple(calibration.shape)}")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab and (int(calibration.min()) < 0 or int(calibration.max()) >= vocab):
        raise ValueError(
            f"calibration ids must lie in [0, {vocab}) (the model's vocabulary), "
            f"got range [{int(calibration.min())}, {int(calibration.max())}]"
        )
    return calibration


def default_structure(method: str | Any) -> str:
    """The structure ``prune`` uses when none is given: ``"structured"`` for methods that can only
    remove whole units (FLAP, SEAP, Wanda-sp, ...), else ``"unstructured"``.

    ``method`` is a registered method name or a scorer (class or instance). Kept in one place so that
    callers looping over methods (sweeps) resolve the default exactly as a single call would.
    """
    if isinstance(method, str):
        from .methods.scorers import SCORERS

        if method not in SCORERS:
            raise ValueError(f"unknown method {method!r}; available: {', '.join(sorted(SCORERS))}")
        method = SCORERS[method]
    return "structured" if tuple(method.structures) == ("structured",) else "unstructured"


def check_nm(targeted, pattern) -> None:
    if not isinstance(pattern, NM):
        return
    for name, mod in targeted.items():
        cols = mod.weight[0].numel()
        if cols % pattern.m:
            raise ValueError(
                f"N:M {pattern}: {name} has {cols} inputs per row, not a multiple of {pattern.m}"
            )
