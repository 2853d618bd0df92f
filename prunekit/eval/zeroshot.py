"""Zero-shot multiple-choice accuracy from local JSONL files, with no extra dependencies.

Perplexity says how much pruning hurt language modelling in general; a multiple-choice task asks
whether the model still prefers the right answer. Each line of a task file is one item::

    {"context": "The capital of France is", "choices": [" Paris", " Rome"], "label": 0}

and the model's answer is the choice whose tokens it finds most likely after the context. The text is
concatenated as is (``context + choice``), so put the separating space where the tokenizer expects it,
usually at the start of each choice. For the lm-evaluation-harness tasks themselves see
:mod:`prunekit.eval.lm_eval`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .perplexity import eval_mode, model_logits

__all__ = ["Item", "load_task", "validate_items", "score_items", "evaluate_task", "evaluate_tasks"]


@dataclass(frozen=True)
class Item:
    """One validated multiple-choice item; ``line`` is its 1-based line in the source file."""

    context: str
    choices: tuple[str, ...]
    label: int
    line: int


def load_task(path: str | Path) -> list[Item]:
    """Read and validate a JSONL task file (blank lines are skipped).

    Raises:
        ValueError: the file is missing or empty, or a line is not valid JSON or not a valid item; the
            message names the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"task file {str(path)!r} does not exist")
    records = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                records.append((number, json.loads(line)))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: invalid JSON ({err.msg})") from None
    return _validate(records, str(path))


def validate_items(records: Iterable[Mapping[str, Any]], source: str = "<items>") -> list[Item]:
    """Validate in-memory items (dicts with ``context``, ``choices``, ``label``); lines count from 1."""
    return _validate(list(enumerate(records, start=1)), source)


def _validate(records: list[tuple[int, Any]], source: str) -> list[Item]:
    items = []
    for number, rec in records:
        where = f"{source}:{number}"
        if not isinstance(rec, Mapping):
            raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        missing = [key for key in ("context", "choices", "label") if key not in rec]
        if missing:
            raise ValueError(f"{where}: missing key(s) {missing}")
        context, choices, label = rec["context"], rec["choices"], rec["label"]
        if not isinstance(context, str):
            raise ValueError(f"{where}: context must be a string, got {type(context).__name__}")
        if not isinstance(choices, list) or not choices:
            raise ValueError(f"{where}: choices must be a non-empty list of strings, got {choices!r}")
        if len(choices) < 2:
            raise ValueError(f"{where}: a multiple-choice item needs at least 2 choices, got {choices!r}")
        bad = [c for c in choices if not isinstance(c, str) or not c]
        if bad:
            raise ValueError(f"{where}: every choice must be a non-empty string, got {bad[0]!r}")
        if isinstance(label, bool) or not isinstance(label, int):
            raise ValueError(f"{where}: label must be an integer index into choices, got {label!r}")
        if not 0 <= label < len(choices):
            raise ValueError(f"{where}: label {label} out of range for {len(choices)} choices")
        items.append(Item(context, tuple(choices), label, number))
    if not items:
        raise ValueError(f"{source}: no items")
    return items


@dataclass
class _Request:
    item: int
    choice: int
    ids: list[int]
    #: index in ``ids`` of the first scored token
    start: int


def _encode(
    tokenizer, item: Item, index: int, choice: int, bos: int | None, max_length: int | None, where: str
) -> _Request:
    """Token ids of BOS + context + choice and where the choice's tokens begin.

    The boundary is the first token of ``tokenize(context + choice)`` that differs from
    ``tokenize(context)``: tokens before it are shared context, the rest are scored. When a tokenizer
    merges the context's last characters with the choice's first ones (a trailing space in the
    context, say), the merged token is scored as part of the choice, conditioned on the context
    before it, so that no choice is ever scored on tokens its competitors did not see.
    """
    ctx = tokenizer(item.context, add_special_tokens=False, verbose=False)["input_ids"]
    full = tokenizer(item.context + item.choices[choice], add_special_tokens=False, verbose=False)[
        "input_ids"
    ]
    shared = 0
    while shared < min(len(ctx), len(full)) and ctx[shared] == full[shared]:
        shared += 1
    prefix = [bos] if bos is not None else []
    ids = prefix + list(full)
    start = len(prefix) + shared
    if start == len(ids):
        raise ValueError(f"{where}: choice {choice} ({item.choices[choice]!r}) adds no tokens")
    if start == 0:
        raise ValueError(
            f"{where}: nothing to condition choice {choice} on (empty context and the tokenizer has "
            "no BOS token)"
        )
    if max_length is not None and len(ids) > max_length:
        cut = len(ids) - max_length
        if cut >= start:
            raise ValueError(
                f"{where}: choice {choice} has {len(ids) - start} tokens, too long for the model's "
                f"{max_length}-token context"
            )
        ids, start = ids[cut:], start - cut  # drop the oldest context tokens, as a sliding window would
    return _Request(index, choice, ids, start)


def score_items(
    model: torch.nn.Module,
    tokenizer,
    items: Sequence[Item],
    batch_size: int = 8,
    progress: bool = False,
    source: str = "<items>",
) -> dict[str, Any]:
    """Accuracy of ``model`` on validated ``items``.

    Each choice gets the sum of the log-probabilities of its tokens given the context (see
    :func:`_encode` for the token boundary; a BOS token is prepended when the tokenizer has one, as
    :mod:`prunekit.data` does for perplexity windows). ``acc`` takes the argmax of the sums,
    ``acc_norm`` the argmax of the sums divided by the choice's length in **characters** (Unicode code
    points; lm-evaluation-harness divides by UTF-8 bytes, which is the same for ASCII text). Ties go
    to the earlier choice.

    Sequences are right-padded into batches, longest first. Padding is harmless without an attention
    mask because the model is causal: a position never sees the tokens after it. Contexts longer than
    ``config.max_position_embeddings`` lose their oldest tokens.

    Returns ``{"acc", "acc_norm", "n", "items": [...]}``, each item with its ``line``, ``label``,
    ``pred``, ``pred_norm``, per-choice ``logprobs`` and ``tokens`` (number of scored tokens).

    Raises:
        ValueError: ``batch_size`` < 1, or a choice that cannot be scored (no tokens, too long).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not items:
        raise ValueError(f"{source}: no items")
    bos = tokenizer.bos_token_id
    max_length = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    requests = []
    for index, item in enumerate(items):
        for choice in range(len(item.choices)):
            requests.append(_encode(tokenizer, item, index, choice, bos, max_length, f"{source}:{item.line}"))

    scores = [[0.0] * len(item.choices) for item in items]
    counts = [[0] * len(item.choices) for item in items]
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i].ids))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    with eval_mode(model), torch.inference_mode():
        for batch in tqdm(batches, desc="zero-shot", unit="batch", disable=not progress):
            reqs = [requests[i] for i in batch]
            width = max(len(r.ids) for r in reqs)
            ids = torch.zeros(len(reqs), width, dtype=torch.long)
            for row, req in enumerate(reqs):
                ids[row, : len(req.ids)] = torch.tensor(req.ids)
            logits = model_logits(model, ids)
            for row, req in enumerate(reqs):
                # logits at position p predict the token at p + 1
                log_probs = F.log_softmax(logits[row, req.start - 1 : len(req.ids) - 1], dim=-1)
                targets = torch.tensor(req.ids[req.start :], device=log_probs.device)
                total = log_probs.gather(1, targets[:, None]).double().sum()
                scores[req.item][req.choice] = float(total)
                counts[req.item][req.choice] = len(targets)

    details = []
    for item, logprobs, tokens in zip(items, scores, counts):
        normed = [lp / len(choice) for lp, choice in zip(logprobs, item.choices)]
        pred = max(range(len(logprobs)), key=lambda i: (logprobs[i], -i))
        pred_norm = max(range(len(normed)), key=lambda i: (normed[i], -i))
        details.append(
            {
                "line": item.line,
                "label": item.label,
                "pred": pred,
                "pred_norm": pred_norm,
                "logprobs": logprobs,
                "tokens": tokens,
            }
        )
    n = len(details)
    return {
        "acc": sum(d["pred"] == d["label"] for d in details) / n,
        "acc_norm": sum(d["pred_norm"] == d["label"] for d in details) / n,
        "n": n,
        "items": details,
    }


def evaluate_task(
    model: torch.nn.Module,
    tokenizer,
    task: str | Path | Sequence[Mapping[str, Any]],
    batch_size: int = 8,
    limit: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """:func:`score_items` on a JSONL file (or a list of item dicts), the first ``limit`` items only
    when given. The whole file is validated before the model runs."""
    if isinstance(task, (str, Path)):
        items, source = load_task(task), str(task)
    else:
        items, source = validate_items(task), "<items>"
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be an integer >= 1, got {limit!r}")
        items = items[:limit]
    return score_items(model, tokenizer, items, batch_size=batch_size, progress=progress, source=source)


def evaluate_tasks(
    model: torch.nn.Module,
    tokenizer,
    tasks: Sequence[str | Path],
    batch_size: int = 8,
    limit: int | None = None,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """:func:`evaluate_task` for each JSONL file, keyed by file stem; every file is validated first."""
    if isinstance(tasks, (str, Path)):
        tasks = [tasks]
    names = [Path(t).stem for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"task files must have distinct names, got {names}")
    for task in tasks:
        load_task(task)  # fail on a bad file before spending time on the good ones
    return {
        name: evaluate_task(model, tokenizer, task, batch_size=batch_size, limit=limit, progress=progress)
        for name, task in zip(names, tasks)
    }


def summary_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table of ``acc`` / ``acc_norm`` per task, with a binomial standard error."""
    lines = ["| task | n | acc | acc_norm |", "|---|---:|---:|---:|"]
    for name, res in results.items():
        n = res["n"]

        def cell(p: float, n: int = n) -> str:
            return f"{p:.4f} ± {math.sqrt(p * (1 - p) / n):.4f}"

        lines.append(f"| {name} | {n} | {cell(res['acc'])} | {cell(res['acc_norm'])} |")
    return "\n".join(lines)
