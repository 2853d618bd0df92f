"""Calibration data of a request: token ids, texts or a ``datasets.Dataset``, checked against the model."""

from __future__ import annotations

from typing import Any

import torch

from ..data import calibration_from_texts
from .options import SpecError
from .request import PruneSpec


def prepare_calibration(
    calibration: Any, model: torch.nn.Module, spec: PruneSpec
) -> torch.Tensor | dict[str, torch.Tensor] | None:
    """Token ids (or ``{task: ids}`` for task-specific structured pruning) for ``spec`` on ``model``.

    Texts are tokenized with the spec's tokenizer and window settings; data a call needs but lacks is an
    error, as is a task dict for a call that is not structured."""
    settings = {
        "tokenizer": spec.tokenizer,
        "n_samples": spec.calibration.n_samples,
        "seq_len": spec.calibration.seq_len,
        "seed": spec.calibration.seed,
        "text_column": spec.calibration.text_column,
    }
    if isinstance(calibration, dict):
        if spec.kind != "structured":
            raise SpecError(
                "calibration as a {task: data} dict is for task-specific structured pruning (SEAP)",
                "calibration",
            )
        if not calibration:
            raise SpecError("the calibration dict is empty", "calibration")
        data = {str(k): validate_calibration(v, model, settings) for k, v in calibration.items()}
    else:
        data = validate_calibration(calibration, model, settings)
    _check_task_weights(spec, data)
    if data is None and needs_calibration(spec, compensation=False):
        needs = sorted(map(str, spec.scorer().requires))
        raise SpecError(
            f"method {spec.method!r} needs calibration data (statistics: {needs})",
            "calibration",
        )
    return data


def _check_task_weights(spec: PruneSpec, data: Any) -> None:
    """task_weights blend the tasks of a {task: data} calibration: each must name one of them."""
    if spec.task_weights is None:
        return
    if not isinstance(data, dict):
        raise SpecError("option task_weights blends the tasks of a {task: data} calibration", "task_weights")
    unknown = sorted(k for k, _w in spec.task_weights if k not in data)
    if unknown:
        raise SpecError(
            f"task_weights name tasks {unknown} not in the calibration (tasks: {sorted(data)})",
            "task_weights",
        )


def needs_calibration(spec: PruneSpec, compensation: bool = True) -> bool:
    """Whether ``spec`` reads calibration data: the method's statistics, OWL's outlier pass, or (with
    ``compensation``) structured bias compensation or refitting."""
    scorer = spec.scorer()
    if scorer.requires or spec.allocation.name == "owl":
        return True
    s = spec.structure
    if not compensation or spec.kind != "structured":
        return False
    compensate = scorer.compensates if s.bias_compensation is None else s.bias_compensation
    return bool(compensate or s.refit)


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
