"""From the arguments of a call (Python keywords, recipe values, command-line flags) to a :class:`PruneSpec`.

Checks run in a fixed order so that every front end reports the same first mistake with the same
message: the method and its own options, the structure, the sparsity, the value of every pruner option,
then whether each given option applies to this call.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ..methods.scorers import Scorer
from ..methods.select import NM, parse_structure
from . import request as rq
from .options import OPTIONS, SpecError, SpecTypeError


def build_spec(
    method: str,
    sparsity: float | None = None,
    structure: str | None = None,
    targets: str | Sequence[str] | None = None,
    ignore: str | Sequence[str] | None = None,
    **options: Any,
) -> rq.PruneSpec:
    """Validate a request and return it typed; raises :class:`SpecError` (a ``ValueError``) naming the
    problem. ``options`` are pruner options (:data:`prunekit.spec.OPTIONS`; None means "not given") and
    the method's own options (everything else, checked by the method's scorer)."""
    cls = rq.scorer_class(method)
    pruner = {k: v for k, v in options.items() if k in OPTIONS and v is not None}
    scorer = _scorer(cls, {k: v for k, v in options.items() if k not in OPTIONS})
    pattern = _structure(structure if structure is not None else rq.default_structure(cls))
    kind = "N:M" if isinstance(pattern, NM) else pattern
    if kind not in cls.structures:
        raise SpecError(
            f"method {method!r} does not support {kind} pruning (supports {cls.structures})", "structure"
        )
    sparsity = _sparsity(sparsity, pattern)
    values = {key: OPTIONS[key].check(key, value) for key, value in pruner.items()}
    search = _search_name(values, cls, kind)
    _refuse_unused(values, kind, search, scorer)
    return rq.PruneSpec(
        method=method,
        sparsity=sparsity,
        structure=_typed_structure(pattern, values, scorer, search),
        allocation=rq.OWLAllocation(values.get("owl_lambda", 0.08), values.get("owl_m", 5.0))
        if values.get("allocation") == "owl"
        else rq.UniformAllocation(),
        calibration=_calibration(values, kind),
        targets=patterns(targets, "targets"),
        ignore=patterns(ignore, "ignore"),
        method_options=tuple(sorted((k, v) for k, v in options.items() if k not in OPTIONS)),
        task=_task(values.get("task")),
        task_weights=_task_weights(values.get("task_weights")),
        progress=bool(values.get("progress", False)),
        tokenizer=values.get("tokenizer"),
    )


def reads_statistics(scorer: Scorer) -> bool:
    """Whether the method reads calibration statistics (activations or gradients)."""
    return bool(scorer.requires)


def _scorer(cls: type[Scorer], method_options: dict[str, Any]) -> Scorer:
    try:
        return cls(**method_options)
    except (TypeError, ValueError) as err:
        unknown = sorted(set(method_options) - set(cls.options))
        raise SpecError(str(err), unknown[0] if unknown else "options") from None


def _structure(structure: Any) -> str | NM:
    try:
        return parse_structure(structure)
    except TypeError as err:
        raise SpecTypeError(str(err), "structure") from None
    except ValueError as err:
        raise SpecError(str(err), "structure") from None


def _sparsity(sparsity: Any, pattern: str | NM) -> float:
    """The requested fraction in [0, 1); N:M fixes it at N/M (a different value is an error)."""
    if sparsity is None:
        return pattern.n / pattern.m if isinstance(pattern, NM) else 0.5
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise SpecTypeError(f"sparsity must be a number in [0, 1), got {sparsity!r}", "sparsity")
    if not 0.0 <= float(sparsity) < 1.0:
        raise SpecError(f"sparsity must lie in [0, 1), got {sparsity}", "sparsity")
    if isinstance(pattern, NM) and abs(float(sparsity) - pattern.n / pattern.m) > 1e-9:
        raise SpecError(
            f"N:M {pattern} fixes the sparsity at {pattern.n / pattern.m:g}, got {sparsity!r} (leave it out)",
            "sparsity",
        )
    return float(sparsity)


def _search_name(values: dict[str, Any], cls: type[Scorer], kind: str) -> str:
    """``layer_sparsity`` means the "per-layer" search; each without the other is an error."""
    given = "layer_sparsity" in values
    search = values.get("structure_search") or ("per-layer" if given else cls.default_structure_search)
    if given and (kind != "structured" or search != "per-layer"):
        raise SpecError(
            "layer_sparsity sets per-block ratios for structured pruning with structure_search='per-layer' "
            f"(got structure {kind!r}, structure_search {search!r})",
            "layer_sparsity",
        )
    if search == "per-layer" and not given:
        raise SpecError(
            "structure_search='per-layer' needs layer_sparsity (per-block ratios)", "structure_search"
        )
    return search


def _refuse_unused(values: dict[str, Any], kind: str, search: str, scorer: Scorer) -> None:
    """An option the call would not use is an error naming it, never silently dropped."""
    effective = {**{k: o.default for k, o in OPTIONS.items()}, **values, "structure_search": search}
    for key, value in values.items():
        option = OPTIONS[key]
        if kind not in option.kinds:
            raise SpecError(
                f"option {key}={value!r} applies to {' / '.join(option.kinds)} pruning, not {kind}", key
            )
        if option.needs is not None and effective[option.needs[0]] != option.needs[1]:
            raise SpecError(
                f"option {key}={value!r} is only used with {option.needs[0]}={option.needs[1]!r}", key
            )
    if scorer.learns_allocation and "granularity" in values:
        raise SpecError(
            f"option granularity: method {scorer.name!r} learns each row's sparsity (no matrix/row choice)",
            "granularity",
        )
    calibrated = reads_statistics(scorer) or values.get("allocation") == "owl"
    if "calibration_mode" in values and not calibrated:
        raise SpecError(
            f"option calibration_mode: method {scorer.name!r} reads no calibration statistics here",
            "calibration_mode",
        )


def _typed_structure(pattern: str | NM, values: dict[str, Any], scorer: Scorer, search: str) -> rq.Structure:
    if isinstance(pattern, NM):
        return rq.SemiStructured(pattern)
    if pattern == "unstructured":
        return rq.Unstructured(values.get("granularity") or scorer.default_granularity)
    return rq.Structured(
        search=_typed_search(search, values),
        gqa=values.get("gqa", "heads"),
        mode=values.get("mode", "hard"),
        bias_compensation=values.get("bias_compensation"),
        refit=values.get("refit"),
        round_to=int(values.get("round_to", 1)),
        dense_blocks=values.get("dense_blocks"),
    )


def _typed_search(search: str, values: dict[str, Any]) -> rq.Search:
    if search == "global":
        return rq.GlobalSearch()
    if search == "logistic":
        return rq.LogisticSearch(**values.get("logistic", {}))
    if search == "per-layer":
        return rq.PerLayerSearch(tuple(sorted(values["layer_sparsity"].items())))
    return rq.UniformSearch()


def _calibration(values: dict[str, Any], kind: str) -> rq.Calibration:
    defaults = {k: OPTIONS[k].default for k in ("batch_size", "n_samples", "seq_len", "seed", "text_column")}
    chosen = {k: values.get(k, d) for k, d in defaults.items()}
    mode = values.get("calibration_mode") or ("sequential" if kind != "structured" else None)
    return rq.Calibration(mode=mode, **chosen)


def patterns(value: Any, what: str) -> tuple[str, ...] | None:
    """Names, dotted suffixes or ``re:`` patterns as a tuple (a single string is one pattern)."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise SpecTypeError(f"{what} must be a name, a pattern or a list of them, got {value!r}", what)
    for p in items:
        if not isinstance(p, str) or not p:
            raise SpecTypeError(
                f"{what} must be names or 're:' patterns (non-empty strings), got {p!r}", what
            )
        if p.startswith("re:"):
            try:
                re.compile(p[3:])
            except re.error as err:
                raise SpecError(f"{what}: invalid regular expression {p!r}: {err}", what) from None
    return tuple(items)


def _task(task: Any) -> str | None:
    if task is not None and not isinstance(task, str):
        raise SpecTypeError(f"option task must be a task name (a string), got {task!r}", "task")
    return task


def _task_weights(weights: Any) -> tuple[tuple[str, float], ...] | None:
    if weights is None:
        return None
    if not isinstance(weights, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in weights.values()
    ):
        raise SpecTypeError(
            f"option task_weights must be a {{task: weight}} dict, got {weights!r}", "task_weights"
        )
    if not any(float(v) for v in weights.values()):
        raise SpecError(f"option task_weights gives every task weight 0: {weights!r}", "task_weights")
    return tuple(sorted((str(k), float(v)) for k, v in weights.items()))
