"""``prunekit.prune``: one call for every method and structure.

The call is split in two phases so that no bad input can leave a half-pruned model: *plan* validates
every argument, traces the model when it needs the groups, scores and decides everything; only then
does *apply* write to the weights.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from .engine.offload import OffloadResult, prune_offloaded
from .engine.report import LayerRow, PruneReport, count_params, matmul_flops, short_layer_name
from .engine.structured import plan_structured, prune_structured
from .engine.targets import group_targets, weight_targets
from .engine.unstructured import prune_unstructured
from .families import get_adapter
from .graph import DependencyGraph
from .graph import trace as trace_graph
from .methods.scorers import get_scorer
from .methods.select import NM, parse_structure
from .spec import check_nm, default_structure, validate_calibration


def _choice(*allowed):
    def check(key, value):
        if value not in allowed:
            raise ValueError(f"option {key}={value!r} is not one of {allowed}")
        return value

    return check


def _number(lo: float, hi: float, integer: bool = False):
    def check(key, value):
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok or not lo <= value <= hi:
            kind = "an integer" if integer else "a number"
            raise ValueError(f"option {key} must be {kind} in [{lo}, {hi}], got {value!r}")
        return value

    return check


def _anything(_key, value):
    return value


def _layer_ratios(key, value):
    """``{block index: ratio}`` or one ratio per block; ratios in [0, 1] (1 is refused later, by name)."""
    if value is None:
        return None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        raise TypeError(
            f"{key} must be a list of per-block ratios or a {{block index: ratio}} dict, got {value!r}"
        )
    out = {}
    for index, ratio in items:
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"{key}: block index must be a non-negative int, got {index!r}")
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) <= 1.0:
            raise ValueError(f"{key}[{index}] must be a number in [0, 1], got {ratio!r}")
        out[index] = float(ratio)
    return out


def _block_pair(key, value):
    """``k`` (the first and the last ``k`` blocks) or ``(first, last)``, non-negative ints."""
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in pair)
    ):
        raise ValueError(f"option {key} must be an int or a (first, last) pair of ints >= 0, got {value!r}")
    return tuple(pair)


#: options the pruner itself understands: name -> (default, validator); the rest go to the scorer
PRUNER_OPTIONS: dict[str, tuple[Any, Any]] = {
    "granularity": (None, _choice(None, "matrix", "row")),
    "gqa": ("heads", _choice("heads", "groups")),
    "mode": ("hard", _choice("hard", "soft")),
    "progress": (False, _choice(False, True)),
    "allocation": ("uniform", _choice("uniform", "owl")),
    "owl_lambda": (0.08, _number(0.0, 0.99)),
    "owl_m": (5.0, _number(0.0, 1e6)),
    "calibration_mode": (None, _choice(None, "sequential", "dense")),
    "batch_size": (8, _number(1, 1 << 20, integer=True)),
    "tokenizer": (None, _anything),
    "n_samples": (32, _number(1, 1 << 20, integer=True)),
    "seq_len": (256, _number(2, 1 << 20, integer=True)),
    "seed": (0, _number(0, 1 << 62, integer=True)),
    "text_column": ("text", _anything),
    "structure_search": (None, _choice(None, "uniform", "global", "logistic", "per-layer")),
    "layer_sparsity": (None, _layer_ratios),
    "task": (None, _anything),
    "task_weights": (None, _anything),
    "logistic": ({}, _anything),
    "bias_compensation": (None, _choice(None, True, False)),
    "refit": (None, _choice(None, True, False)),
    "round_to": (1, _number(1, 1 << 16, integer=True)),
    "dense_blocks": (None, _block_pair),
}


def _resolve_per_layer(opts: dict, scorer, kind: str) -> None:
    """``layer_sparsity`` means the "per-layer" search; each without the other is an error."""
    given = opts["layer_sparsity"] is not None
    if opts["structure_search"] is None:
        opts["structure_search"] = "per-layer" if given else scorer.default_structure_search
    if given and (kind != "structured" or opts["structure_search"] != "per-layer"):
        raise ValueError(
            "layer_sparsity sets per-block ratios for structured pruning with structure_search='per-layer' "
            f"(got structure {kind!r}, structure_search {opts['structure_search']!r})"
        )
    if opts["structure_search"] == "per-layer" and not given:
        raise ValueError("structure_search='per-layer' needs layer_sparsity (per-block ratios)")


def _split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Pruner options (validated, defaults filled in; None means "not given") and scorer options."""
    pruner = {k: default for k, (default, _check) in PRUNER_OPTIONS.items()}
    scorer = {}
    for key, value in options.items():
        if key in PRUNER_OPTIONS:
            if value is not None:
                pruner[key] = PRUNER_OPTIONS[key][1](key, value)
        else:
            scorer[key] = value
    return pruner, scorer


#: pruner options that only some calls use: name -> (structures it applies to, what else it needs)
OPTION_SCOPE = {
    "granularity": (("unstructured",), None),  # N:M picks N of every M along each row by definition
    "allocation": (("unstructured", "N:M"), None),
    "owl_lambda": (("unstructured", "N:M"), ("allocation", "owl")),
    "owl_m": (("unstructured", "N:M"), ("allocation", "owl")),
    "gqa": (("structured",), None),
    "mode": (("structured",), None),
    "structure_search": (("structured",), None),
    "bias_compensation": (("structured",), None),
    "refit": (("structured",), None),
    "round_to": (("structured",), None),
    "dense_blocks": (("structured",), None),
    "logistic": (("structured",), ("structure_search", "logistic")),
}


def _refuse_unused(given: dict[str, Any], kind: str, opts: dict[str, Any], scorer) -> None:
    """An option the call would not use is an error naming it, never silently dropped."""
    for key, value in given.items():
        if key not in OPTION_SCOPE or value is None:
            continue
        kinds, needs = OPTION_SCOPE[key]
        if kind not in kinds:
            raise ValueError(f"option {key}={value!r} applies to {' / '.join(kinds)} pruning, not {kind}")
        if needs is not None and opts[needs[0]] != needs[1]:
            raise ValueError(f"option {key}={value!r} is only used with {needs[0]}={needs[1]!r}")
    calibrated = bool(scorer.requires) or opts["allocation"] == "owl"
    if given.get("calibration_mode") is not None and not calibrated:
        raise ValueError(
            f"option calibration_mode: method {scorer.name!r} reads no calibration statistics here"
        )


def prune(
    model: torch.nn.Module,
    method: str = "magnitude",
    sparsity: float = 0.5,
    structure: str | None = None,
    calibration: Any = None,
    targets: str | Sequence[str] | None = None,
    ignore: str | Sequence[str] | None = None,
    **options: Any,
) -> PruneReport:
    """Prune ``model`` in place and return a per-layer :class:`PruneReport`.

    ``structure`` (default: ``"unstructured"``, or ``"structured"`` for structured-only methods such
    as FLAP and SEAP) is ``"unstructured"``, an N:M pattern such as ``"2:4"`` (N of every M consecutive
    input weights of a row are zeroed), or ``"structured"`` (whole channels and heads are removed, so
    the model shrinks). ``sparsity`` is the fraction removed: of each targeted matrix (or row, with
    ``granularity="row"``), or of each targeted group's units for structured pruning.
    ``targets``/``ignore`` take module names (unstructured) or group roles/names (structured), as
    names, dotted suffixes or ``"re:"`` regular expressions.

    Pruner options: ``granularity`` ("matrix" | "row"), ``gqa`` ("heads": the same number of query
    heads from every KV group, "groups": whole KV groups), ``mode`` ("hard" removes, "soft" zeroes),
    ``progress`` (bool), ``allocation`` ("uniform" | "owl", with ``owl_lambda``, ``owl_m``),
    ``calibration_mode`` ("sequential" | "dense"), ``batch_size``, ``structure_search`` ("uniform" |
    "global" | "logistic", with ``logistic={"first", "last", "k", "x0"}`` | "per-layer", with
    ``layer_sparsity``: one ratio per block, or ``{block: ratio}`` with ``sparsity`` for the rest),
    ``bias_compensation`` (bool), ``refit`` (least-squares refit of each shrunk consumer's kept columns and
    bias over the calibration inputs instead of the mean alone), ``task`` and ``task_weights`` (with
    calibration ``{task: data}``),
    ``round_to`` (keep a multiple of this many channels), ``dense_blocks`` (``k`` or ``(first, last)``:
    those blocks stay dense and the requested share of the targeted weights comes from the others);
    for text calibration ``tokenizer``, ``n_samples``, ``seq_len``, ``seed``, ``text_column``.
    Any other keyword goes to the method's scorer, which refuses unknown ones.
    Every argument is checked before the model is touched: on error the model is unchanged.
    """
    t0 = time.perf_counter()
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise TypeError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity must lie in [0, 1), got {sparsity}")
    sparsity = float(sparsity)
    pruner_opts, scorer_opts = _split_options(options)
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, got {type(method).__name__}")
    scorer = get_scorer(method, **scorer_opts)
    if structure is None:
        structure = default_structure(scorer)
    pattern = parse_structure(structure)
    kind = "N:M" if isinstance(pattern, NM) else pattern
    if kind not in scorer.structures:
        raise ValueError(f"method {method!r} does not support {kind} pruning (supports {scorer.structures})")
    if pruner_opts["granularity"] is None:
        pruner_opts["granularity"] = scorer.default_granularity
    _resolve_per_layer(pruner_opts, scorer, kind)
    _refuse_unused(options, kind, pruner_opts, scorer)
    if kind != "structured" and pruner_opts["calibration_mode"] is None:
        pruner_opts["calibration_mode"] = "sequential"  # structured: the planner picks the method's own
    if isinstance(calibration, dict):
        if kind != "structured":
            raise ValueError(
                "calibration as a {task: data} dict is for task-specific structured pruning (SEAP)"
            )
        if not calibration:
            raise ValueError("the calibration dict is empty")
        calibration = {str(k): validate_calibration(v, model, pruner_opts) for k, v in calibration.items()}
    else:
        calibration = validate_calibration(calibration, model, pruner_opts)
    if (scorer.requires or pruner_opts["allocation"] == "owl") and calibration is None:
        needs = sorted(map(str, scorer.requires))
        raise ValueError(f"method {method!r} needs calibration data (statistics: {needs})")

    adapter = get_adapter(model)
    layer_names = _layer_names(model, adapter)
    before = count_params(model, layer_names)
    flops_before = matmul_flops(model)
    shown = {k: v for k, v in pruner_opts.items() if k != "tokenizer"}
    report = PruneReport(method, str(pattern), sparsity, [], options={**shown, **scorer.config})
    progress = pruner_opts["progress"]
    if kind == "structured":
        targeted_weights: dict[str, torch.nn.Module] = {}
        _prune_structured(
            model, adapter, scorer, sparsity, targets, ignore, pruner_opts, calibration, report, progress
        )
    else:
        targeted_weights = weight_targets(model, adapter.layers(model), targets, ignore)
        check_nm(targeted_weights, pattern)
        result = prune_unstructured(
            model,
            adapter.layers(model),
            targeted_weights,
            scorer,
            sparsity,
            pattern if isinstance(pattern, NM) else None,
            per_row=pruner_opts["granularity"] == "row",
            calibration=calibration,
            allocation=pruner_opts["allocation"],
            owl_lambda=pruner_opts["owl_lambda"],
            owl_m=pruner_opts["owl_m"],
            calibration_mode=pruner_opts["calibration_mode"],
            batch_size=pruner_opts["batch_size"],
            progress=progress,
            taps=adapter.stat_taps(model),
        )
        report.masks = {f"{name}.weight": mask for name, mask in result.masks.items()}
        report.errors = result.errors
        report.block_sparsity = result.block_sparsity

    after = count_params(model, layer_names)
    for name in [*layer_names, "(other)"]:
        row = LayerRow(short_layer_name(name), before[name], after[name])
        for wname, mod in targeted_weights.items():
            if (
                name == "(other)" and not any(wname.startswith(ln + ".") for ln in layer_names)
            ) or wname.startswith(name + "."):
                row.targeted += mod.weight.numel()
                row.zeros += int((mod.weight == 0).sum())
        report.rows.append(row)
    report.flops_per_token = (flops_before, matmul_flops(model))
    report.seconds = time.perf_counter() - t0
    return report


def _layer_names(model: torch.nn.Module, adapter) -> list[str]:
    ids = {id(m) for m in adapter.layers(model)}
    return [name for name, mod in model.named_modules() if id(mod) in ids]


def _prune_structured(
    model, adapter, scorer, sparsity, targets, ignore, opts, calibration, report, progress
) -> None:
    graph = trace_graph(model, adapter=adapter)
    report.skipped = [f"{g.name or g.role}: {why}" for g, why in graph.rejected]
    groups = group_targets(graph.groups, adapter.default_structured_roles, targets, ignore)
    plan = prune_structured(model, adapter, graph, groups, scorer, sparsity, calibration, opts, progress)
    for group, units in plan.decision:
        report.removed[f"{short_layer_name(group.name) or group.role} ({group.role})"] = units.tolist()
        layer = group.layer_index()
        row = f"layers.{layer}" if layer is not None else "(other)"
        report.units.setdefault(row, {})[group.role] = (group.num_units, group.num_units - len(units))
    report.compensated = sorted(plan.bias_deltas)
    report.notes = list(plan.notes)
    report.options["calibration_mode"] = plan.calibration_mode


def task_masks(
    model: torch.nn.Module,
    calibration: dict,
    method: str = "seap",
    sparsity: float = 0.2,
    targets: str | Sequence[str] | None = None,
    ignore: str | Sequence[str] | None = None,
    **options: Any,
):
    """Compute one structured soft mask per task (and a generic one) and return a switchable
    :class:`~prunekit.engine.task_masks.TaskMasks`; the model stays dense until ``.apply(task)``.

    ``calibration`` is ``{task: token ids | texts | Dataset}``; other arguments as for :func:`prune`.
    """
    from .engine.task_masks import TaskMasks

    if not isinstance(calibration, dict) or not calibration:
        raise ValueError("task_masks needs calibration as a non-empty {task: data} dict")
    if "task" in options or options.get("mode", "soft") != "soft":
        raise ValueError("task_masks builds soft masks for every task: do not pass task= or mode=")
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must lie in [0, 1), got {sparsity!r}")
    pruner_opts, scorer_opts = _split_options({**options, "mode": "soft"})
    scorer = get_scorer(method, **scorer_opts)
    if "structured" not in scorer.structures:
        raise ValueError(f"method {method!r} does not do structured pruning")
    if pruner_opts["structure_search"] is None:
        pruner_opts["structure_search"] = scorer.default_structure_search
    data = {str(k): validate_calibration(v, model, pruner_opts) for k, v in calibration.items()}
    adapter = get_adapter(model)
    graph = trace_graph(model, adapter=adapter)
    groups = group_targets(graph.groups, adapter.default_structured_roles, targets, ignore)
    plans = {}
    for task in [*data, None]:
        opts = {**pruner_opts, "task": task}
        plans[task] = plan_structured(
            model, adapter, graph, groups, scorer, float(sparsity), data, opts, pruner_opts["progress"]
        )
    return TaskMasks(model, adapter, graph, plans)


def trace(
    model: torch.nn.Module, example_inputs: torch.Tensor | None = None, adapter=None
) -> DependencyGraph:
    """The model's prunable groups: :func:`prunekit.graph.trace` with the family adapter looked up from
    the model's config when ``adapter`` is not given (the adapter names roles and rejects what the
    family's code cannot shrink)."""
    return trace_graph(model, example_inputs, adapter or get_adapter(model))


__all__ = ["OffloadResult", "prune", "prune_offloaded", "task_masks", "trace"]
