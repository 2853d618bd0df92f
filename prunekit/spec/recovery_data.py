"""The training and held-out windows of a recovery call, from whatever the user passed as data.

``data`` may be token ids ``[N, L]``, a list of texts, a ``datasets.Dataset``, or a text source: None or
``"default"`` (the embedded stdlib documentation) or the path of a text file. A text source gives
training windows from its calibration split and held-out windows from its evaluation split, so the
perplexity before and after recovery is measured on text the training never saw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..data import calibration_ids, eval_windows
from .calibration import validate_calibration
from .options import SpecError
from .recovery import RecoverySpec


def recovery_windows(
    data: Any, model: torch.nn.Module, spec: RecoverySpec, eval_data: Any = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(training windows, held-out windows or None)`` for ``spec`` on ``model``.

    Raises:
        SpecError: text without a tokenizer, a file that does not exist, text shorter than one window,
            ids outside the model's vocabulary.
    """
    source = _source(data)
    try:
        if source is not _NOT_A_SOURCE:
            tok = _tokenizer(spec, "data")
            train = calibration_ids(tok, spec.n_samples, spec.seq_len, spec.seed, source)
        else:
            settings = {
                "tokenizer": spec.tokenizer, "n_samples": spec.n_samples, "seq_len": spec.seq_len,
                "seed": spec.seed, "text_column": spec.text_column,
            }  # fmt: skip
            train = validate_calibration(data, model, settings)
    except (ValueError, TypeError) as err:
        if isinstance(err, SpecError):
            raise
        raise SpecError(f"recovery data: {err}", "data") from None
    if len(train) < 1 or train.shape[1] < 2:
        raise SpecError("recovery data needs windows of at least 2 tokens", "data")
    return train, _held_out(eval_data, source, model, spec)


_NOT_A_SOURCE = object()


def _source(data: Any) -> Any:
    """The text source ``data`` names (None for the default), or ``_NOT_A_SOURCE``."""
    if data is None or (isinstance(data, str) and data in ("default", "pydoc")):
        return None
    if isinstance(data, (str, Path)):
        path = Path(data).expanduser()
        if not path.is_file():
            raise SpecError(
                f"recovery data {str(data)!r} is neither 'default' nor an existing text file", "data"
            )
        return str(path)
    return _NOT_A_SOURCE


def _held_out(eval_data: Any, source: Any, model, spec: RecoverySpec) -> torch.Tensor | None:
    if spec.eval_windows == 0:
        if eval_data is not None:
            raise SpecError("eval_data is given but eval_windows=0 measures nothing", "eval_data")
        return None
    if eval_data is None:
        if source is _NOT_A_SOURCE:
            return None  # ids or texts the user chose: no held-out split is known
        eval_source = source
    elif isinstance(eval_data, torch.Tensor):
        return validate_calibration(eval_data, model)[: spec.eval_windows]
    else:
        eval_source = _source(eval_data)
        if eval_source is _NOT_A_SOURCE:
            raise SpecError("eval_data must be token ids [N, L], 'default' or a text file", "eval_data")
    try:
        return eval_windows(_tokenizer(spec, "eval_data"), spec.seq_len, spec.eval_windows, eval_source)
    except ValueError as err:
        raise SpecError(f"recovery eval_data: {err}", "eval_data") from None


def _tokenizer(spec: RecoverySpec, key: str):
    if spec.tokenizer is None:
        raise SpecError(f"recovery {key} given as text needs a tokenizer (pass tokenizer=...)", key)
    return spec.tokenizer
