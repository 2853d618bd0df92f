"""Run lm-evaluation-harness tasks on an in-memory (pruned) model.

A structurally pruned model may have layers of different sizes; saving it and having the harness
reload it from disk works only where transformers can rebuild it. Handing the harness the live model
object avoids the round trip. The harness is an optional dependency (``pip install "prunekit[eval]"``)
and most of its tasks download their data from the Hugging Face hub, so this is for machines with a
network or a populated datasets cache; :mod:`prunekit.eval.zeroshot` scores local JSONL files without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["evaluate_lm_eval"]

_INSTALL = 'the lm-evaluation-harness bridge needs lm-eval: pip install "prunekit[eval]"'


def evaluate_lm_eval(
    model: torch.nn.Module,
    tokenizer: Any,
    tasks: str | Sequence[str | dict[str, Any]],
    batch_size: int = 1,
    hflm_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` on ``model`` as it is in memory; returns the harness's result dict
    (per-task metrics under ``["results"]``).

    ``tasks`` are harness task names (``"hellaswag"``) or task config dicts (which can point at local
    files, e.g. ``{"dataset_path": "json", "dataset_kwargs": {"data_files": ...}, ...}``). ``kwargs``
    go to ``simple_evaluate`` (``num_fewshot``, ``limit``, ``log_samples``, ...); ``hflm_kwargs`` to the
    harness's ``HFLM`` wrapper (``max_length``, ``add_bos_token``, ...). The model stays on
    its device and is evaluated in eval mode; its previous mode is restored afterwards.

    Raises:
        ImportError: lm-eval is not installed (the message says how to install it).
        ValueError: no tasks.
    """
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError as err:
        raise ImportError(f"{_INSTALL} ({err})") from err
    if isinstance(tasks, (str, dict)):
        tasks = [tasks]
    tasks = list(tasks)
    if not tasks:
        raise ValueError("tasks is empty: name at least one lm-eval task")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    was_training = model.training
    model.eval()
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, **(hflm_kwargs or {}))
        return lm_eval.simple_evaluate(model=lm, tasks=tasks, **kwargs)
    finally:
        model.train(was_training)
