"""One engine for every request: :func:`plan` resolves a :class:`~prunekit.spec.PruneSpec` on a model,
:func:`execute` runs it block by block and builds the :class:`PruneReport`.

Planning reads the model but writes nothing: it finds the family adapter and the blocks, resolves the
targets (weights for unstructured and N:M pruning, traced groups for structured pruning) and checks
them. Execution is where weights change; each executor puts every weight back if it fails half-way.
Offloaded models (:mod:`.offload`) go through the same two steps with a :class:`BlockStream` that
brings each block in from disk and writes it out again.
"""

from __future__ import annotations

import time

import torch

from ..families import get_adapter
from ..graph import trace
from ..spec import PruneSpec, SemiStructured
from .besa import prune_besa
from .calibration import BlockStream
from .experts import ExpertsSplit, check_expert_groups, find_experts, param_masks, split_experts, splits_for
from .plan import Plan
from .report import LayerRow, PruneReport, count_params, matmul_flops, short_layer_name
from .structured import plan_structured, prune_structured
from .targets import check_nm, group_targets, weight_targets
from .task_masks import TaskMasks
from .unstructured import prune_unstructured


def plan(
    model: torch.nn.Module,
    spec: PruneSpec,
    calibration: torch.Tensor | dict[str, torch.Tensor] | None = None,
    stream: BlockStream | None = None,
) -> Plan:
    """Resolve ``spec`` on ``model``; ``calibration`` comes checked from
    :func:`prunekit.spec.prepare_calibration`."""
    t0 = time.perf_counter()
    adapter = get_adapter(model)
    blocks = adapter.layers(model)
    ids = {id(m) for m in blocks}
    layer_names = [name for name, mod in model.named_modules() if id(mod) in ids]
    resolved = Plan(model, spec, spec.scorer(), adapter, calibration, blocks, layer_names, stream=stream)
    if spec.kind == "structured":
        adapter.check_structured(model)
        resolved.graph = trace(model, adapter=adapter)
        roles = adapter.default_structured_roles
        resolved.groups = group_targets(resolved.graph.groups, roles, spec.targets, spec.ignore)
        check_expert_groups(resolved.groups, spec.structure.mode, spec.scorer())
        resolved.experts = list(splits_for(model, resolved.groups).values())
    else:
        found = find_experts(model)
        resolved.targeted = weight_targets(model, blocks, spec.targets, spec.ignore, experts=found)
        resolved.experts = [
            e
            for e in found
            if isinstance(e, ExpertsSplit) and any(n in resolved.targeted for n in e.targets())
        ]
        if isinstance(spec.structure, SemiStructured):
            check_nm(resolved.targeted, spec.structure.pattern)
    resolved.seconds = time.perf_counter() - t0
    return resolved


def execute(plan: Plan) -> PruneReport:
    """Prune ``plan.model`` in place and report what changed, layer by layer."""
    t0 = time.perf_counter()
    model, spec = plan.model, plan.spec
    before = count_params(model, plan.layer_names)
    flops_before = matmul_flops(model)
    report = PruneReport(
        spec.method, str(spec.structure), spec.sparsity, [], options={**spec.options(), **plan.scorer.config}
    )
    if spec.kind == "structured":
        _structured(plan, report)
    else:
        _unstructured(plan, report)
    _rows(plan, report, before)
    report.flops_per_token = (flops_before, matmul_flops(model))
    report.seconds = plan.seconds + time.perf_counter() - t0
    return report


def _unstructured(plan: Plan, report: PruneReport) -> None:
    result = prune_besa(plan) if plan.scorer.learns_allocation else prune_unstructured(plan)
    report.masks = param_masks(result.masks, plan.experts)  # experts: one mask per 3-D parameter
    report.errors = result.errors
    report.notes = list(result.notes)
    report.block_sparsity = result.block_sparsity


def _structured(plan: Plan, report: PruneReport) -> None:
    graph = plan.graph
    report.skipped = [f"{g.name or g.role}: {why}" for g, why in graph.rejected]
    done = prune_structured(plan)
    for group, units in done.decision:
        report.removed[f"{short_layer_name(group.name) or group.role} ({group.role})"] = units.tolist()
        layer = group.layer_index()
        row = f"layers.{layer}" if layer is not None else "(other)"
        report.units.setdefault(row, {})[group.role] = (group.num_units, group.num_units - len(units))
    report.compensated = sorted(done.bias_deltas)
    report.notes = list(done.notes)
    report.options["calibration_mode"] = done.calibration_mode


def _rows(plan: Plan, report: PruneReport, before: dict[str, int]) -> None:
    after = count_params(plan.model, plan.layer_names)
    for name in [*plan.layer_names, "(other)"]:
        row = LayerRow(short_layer_name(name), before[name], after[name])
        for wname, mod in plan.targeted.items():
            inside = wname.startswith(name + ".")
            outside = name == "(other)" and not any(wname.startswith(ln + ".") for ln in plan.layer_names)
            if inside or outside:
                zeros, numel = _zeros(plan, wname, mod)
                row.targeted += numel
                row.zeros += zeros
        report.rows.append(row)


def _zeros(plan: Plan, name: str, module: torch.nn.Module) -> tuple[int, int]:
    """(zero entries, entries) of a targeted weight; an offloaded one was counted as it was written."""
    streamed = plan.stream.zeros.get(f"{name}.weight") if plan.stream is not None else None
    if streamed is not None:
        return streamed
    return int((module.weight == 0).sum()), module.weight.numel()


def task_masks(plan: Plan) -> TaskMasks:
    """One soft structured mask per task of ``plan.calibration`` (and the blended generic one)."""
    with split_experts(plan.experts):
        plans = {task: plan_structured(plan, task) for task in [*plan.calibration, None]}
    return TaskMasks(plan.model, plan.adapter, plan.graph, plans)
