"""Structured pruning: score every unit of every targeted group, decide how many go where, remove them.

Calibrated scorers read the statistics of a group's *consumers*: the modules whose input dimension the
group occupies (``o_proj``/``down_proj``/Mamba's ``out_proj`` and ``x_proj``). Two calibration modes:

- ``"dense"`` (FLAP's code): one block-wise pass over the dense model gathers every block's statistics
  before any block is cut; the only mode for the global search, which compares all blocks at once.
- ``"sequential"`` (Wanda-sp's code): each block is scored on the outputs of the blocks already pruned
  before it, pruned (soft zeros and compensation, so its outputs are those of the pruned block), and
  its outputs recomputed for the next; hard removal follows at the end. A failure on the way puts every
  weight back.

How many units each group loses is the search (:mod:`.budgets`). Bias compensation adds
W[:, removed] · E[x_removed] to every consumer's bias (creating the bias when the layer has none), so the
expected output of each shrunk layer is unchanged on calibration data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from ..graph.groups import Group
from ..methods.compensation import requirements
from ..methods.scorers.base import zscore
from ..methods.statistics import ModuleStats, Scope, of_scope, pooled
from ..spec import Search, Structured
from .calibration import run_blockwise
from .experts import split_experts, view_group
from .gradients import model_statistics
from .plan import Plan
from .snapshot import Snapshot
from .structured_budget import decide, group_ratios, spare_blocks
from .structured_writes import add_biases, compensation, consumers, refits, write_weights
from .surgery import dropped_outer, remove, soft_zero, validate


@dataclass
class StructuredDecision:
    decision: list[tuple[Group, torch.Tensor]] = field(default_factory=list)
    #: consumer module name -> bias delta to add (before removal)
    bias_deltas: dict[str, torch.Tensor] = field(default_factory=dict)
    #: consumer weight name -> refitted weight (``refit=True``), written before removal
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    #: groups that lost fewer units than asked, and why (family constraints, at least one unit kept)
    notes: list[str] = field(default_factory=list)
    #: sequential calibration already wrote the biases and soft zeros; only hard removal is left
    written: bool = False
    #: the weights before a written plan, to put back if its removal fails
    snapshot: Snapshot | None = None
    #: where the statistics came from: "dense" or "sequential"
    calibration_mode: str = "dense"


def consumer_stats(
    model, blocks, groups, needs, calibration, batch_size, progress, taps=None
) -> dict[str, ModuleStats]:
    """Block-scope statistics of every consumer module of ``groups``, from one dense block-wise pass."""
    if not needs:
        return {}
    names = {m.module for g in groups for sub in (g, *g.unit_groups) for m in consumers(sub)}
    modules = dict(model.named_modules())
    block_names = {id(b): n for n, b in model.named_modules()}
    per_block = []
    for b in blocks:
        prefix = block_names[id(b)] + "."
        per_block.append({n: modules[n] for n in names if n.startswith(prefix)})
    stats: dict[str, ModuleStats] = {}

    def keep(_index, _block, block_stats):
        stats.update(block_stats)

    run_blockwise(
        model,
        blocks,
        calibration,
        per_block,
        needs,
        keep,
        mode="dense",
        batch_size=batch_size,
        progress=progress,
        desc="structured statistics",
        taps=taps,
    )
    return stats


def primary_consumers(graph) -> set[str]:
    """Modules that write the residual stream (o_proj, down_proj, out_proj): FLAP's output projections."""
    everything = list(graph.groups) + [g for g, _why in graph.rejected]
    return {m.module for g in everything if g.role == "residual" for m in g.members if m.side == "out"}


def _score_groups(
    model, groups, scorer, stats, primary, per_param=None, comparable=False
) -> list[torch.Tensor]:
    """Each group's unit scores from its primary consumers' statistics (``comparable``: on the scale the
    global search shares across groups)."""
    scores = []
    for group in groups:
        if group.unit_groups:  # a unit made of a group (an expert of its channels): the sum of its scores
            sums = torch.stack([s.sum() for s in _score_groups(model, group.unit_groups, scorer, stats,
                                                                primary, per_param)])  # fmt: skip
            scores.append(zscore(sums.double()) if comparable else sums)
            continue
        weights = {p: model.get_parameter(p) for p in group.params}
        readers = [m for m in consumers(group) if m.module in primary] or consumers(group)
        group_stats = {m.module: stats[m.module] for m in readers if m.module in stats}
        if per_param:  # full-model statistics belong to parameters: each member's, on its module
            for m in group.members:
                module_stats = group_stats.get(m.module, ModuleStats())
                group_stats[m.module] = module_stats.with_params(m.attr, per_param[m.param])
        if scorer.requires and not group_stats:
            raise ValueError(
                f"method {scorer.name!r} needs consumer statistics, but group {group.name!r} "
                "has no consuming layer inside the blocks"
            )
        score = scorer.comparable_unit_scores if comparable else scorer.unit_scores
        scores.append(score(group, weights, group_stats))
    return scores


def _blend(per_task: dict[str, list[torch.Tensor]], weights: dict[str, float] | None) -> list[torch.Tensor]:
    """Generic scores: each task's scores scaled to mean 1 within a group, then a weighted sum."""
    tasks = list(per_task)
    weights = weights or {t: 1.0 for t in tasks}
    out = []
    for i in range(len(per_task[tasks[0]])):
        total = 0
        for t in tasks:
            s = per_task[t][i].double()
            total = total + float(weights.get(t, 0.0)) * s / s.abs().mean().clamp_min(1e-30)
        out.append(total)
    return out


def plan_structured(plan: Plan, task: str | None = None) -> StructuredDecision:
    """Score and decide: the removals and bias deltas to apply.

    With dense statistics nothing is written; sequential calibration writes each block's soft zeros and
    compensation as it goes (``written``) and puts every weight back if anything fails. With
    calibration ``{task: ids}`` (task-specific pruning, SEAP) statistics are gathered per task, and
    ``task`` picks one task's scores, or (``None``) a blend of all tasks weighted by the spec's
    ``task_weights``.
    """
    model, adapter, scorer, calibration = plan.model, plan.adapter, plan.scorer, plan.calibration
    s = plan.spec.structure
    compensate = _compensation(scorer, s)
    if compensate and calibration is None:
        what = "the least-squares refit" if compensate == "refit" else "bias compensation"
        raise ValueError(f"{what} needs calibration data (or pass bias_compensation=False)")
    _check_task(calibration, task)
    groups, sparsity = spare_blocks(model, adapter, plan.groups, plan.spec.sparsity, s.dense_blocks, s.search)
    needs = scorer.requires | requirements(compensate)
    views = as_views(groups, {split.name: split for split in plan.experts})
    mode = plan.spec.calibration.mode or default_calibration(groups, calibration, scorer, s.search)
    if mode == "sequential":
        check_sequential(groups, calibration, scorer, s.search)
        ratios = group_ratios(groups, sparsity, s.search, len(plan.blocks))
        return _plan_sequential(plan, groups, views, ratios, needs)
    scores, stats = _dense_scores(plan, views, needs, task)
    drops, notes = decide(model, adapter, groups, scores, sparsity, s)
    decision = validate(model, list(zip(groups, drops)), plan.graph.param_shapes, adapter)
    done = StructuredDecision(decision, notes=notes, calibration_mode="dense")
    viewed = [(v, units) for v, (_g, units) in zip(views, decision)]
    if compensate == "refit":
        done.weights, done.bias_deltas = refits(model, viewed, stats)
    elif compensate:
        done.bias_deltas = compensation(model, viewed, stats)
    done.bias_deltas = _biases_that_fit(model, done.bias_deltas, done.notes)
    return done


def _biases_that_fit(model, deltas: dict[str, torch.Tensor], notes: list[str]) -> dict[str, torch.Tensor]:
    """Bias deltas for layers that can hold a bias: an expert's Linear is a view of a 3-D tensor, and
    where the experts have no bias tensor none can be created for one of them (said in a note)."""
    fixed = [n for n in deltas if getattr(model.get_submodule(n), "prunekit_expert_view", False)
             and getattr(model.get_submodule(n), "bias", None) is None]  # fmt: skip
    if fixed:
        notes.append(f"no bias compensation for {len(fixed)} expert projections: the experts have no bias")
    return {n: d for n, d in deltas.items() if n not in fixed}


def _compensation(scorer, s: Structured) -> str | None:
    """None, "mean" (FLAP's bias compensation) or "refit" (least squares, :mod:`.refit`)."""
    bias = s.bias_compensation
    if s.refit:
        if bias is False:
            raise ValueError("refit=True refits the biases too: it cannot go with bias_compensation=False")
        return "refit"
    return "mean" if (scorer.compensates if bias is None else bias) else None


def default_calibration(groups, calibration, scorer, search: Search) -> str:
    """The method's own choice (the reference code's: FLAP dense, Wanda-sp sequential), or dense where
    sequential statistics cannot serve the call."""
    if scorer.structured_calibration != "sequential" or not scorer.requires:
        return "dense"
    try:
        check_sequential(groups, calibration, scorer, search)
    except ValueError:
        return "dense"
    return "sequential"


def check_sequential(groups, calibration, scorer, search: Search) -> None:
    """Why sequential statistics cannot serve this call, as an error (nothing is touched yet)."""
    if search.name == "global":
        raise ValueError(
            "structure_search='global' compares every block before any is cut: it needs "
            "calibration_mode='dense'"
        )
    if any(g.kind == "experts" for g in groups):
        raise ValueError(
            "removing whole experts re-routes tokens, which zeros cannot show the next block: "
            "calibration_mode='dense'"
        )
    if isinstance(calibration, dict):
        raise ValueError("task-specific calibration ({task: data}) needs calibration_mode='dense'")
    if of_scope(scorer.requires, Scope.MODEL):
        raise ValueError(
            f"method {scorer.name!r} scores with full-model gradients, not block by block: "
            "calibration_mode='dense'"
        )
    outside = [g.name or g.role for g in groups if g.layer_index() is None]
    if outside:
        raise ValueError(
            f"sequential calibration prunes block by block; groups {outside[:3]} span several blocks: "
            "use calibration_mode='dense' or leave them out"
        )


def _check_task(calibration, task) -> None:
    if isinstance(calibration, dict):
        if task is not None and task not in calibration:
            raise ValueError(f"task {task!r} is not in the calibration dict (tasks: {sorted(calibration)})")
    elif task is not None:
        raise ValueError("task= needs calibration given as a dict {task: texts or token ids}")


def _dense_scores(plan: Plan, groups, needs, task: str | None):
    """Scores (comparable across groups for the global search) and consumer statistics, per task."""
    model, scorer, calibration, progress = plan.model, plan.scorer, plan.calibration, plan.spec.progress
    primary = primary_consumers(plan.graph)
    comparable = plan.spec.structure.search.name == "global"
    sources = calibration if isinstance(calibration, dict) else {None: calibration}
    block_needs = of_scope(needs, Scope.BLOCK)
    params = {p: model.get_parameter(p) for g in groups for p in g.params}
    batch = plan.spec.calibration.batch_size
    stats_by, scores_by = {}, {}
    for name, ids in sources.items():
        stats_by[name] = consumer_stats(
            model, plan.blocks, groups, block_needs, ids, batch, progress, plan.taps
        )
        per_param = model_statistics(model, ids, params, needs, progress=progress)  # {} without MODEL needs
        scores_by[name] = _score_groups(model, groups, scorer, stats_by[name], primary, per_param, comparable)
    if isinstance(calibration, dict) and task is None:
        weights = dict(plan.spec.task_weights) if plan.spec.task_weights is not None else None
        return _blend(scores_by, weights), _pooled(stats_by)
    key = task if isinstance(calibration, dict) else None
    return scores_by[key], stats_by[key]


def _plan_sequential(plan: Plan, groups, views, ratios, needs) -> StructuredDecision:
    """Block by block: score on the outputs of the pruned blocks before, soft-prune, pass on."""
    model, adapter, graph, scorer, blocks = plan.model, plan.adapter, plan.graph, plan.scorer, plan.blocks
    s = plan.spec.structure
    block_of = [g.layer_index() for g in groups]  # check_sequential refused groups outside one block
    primary = primary_consumers(graph)
    compensate = _compensation(scorer, s)
    done = StructuredDecision(written=True, calibration_mode="sequential")
    snapshot = Snapshot(
        model, [p for g in groups for p in g.params], [m.module for v in views for m in consumers(v)]
    )

    def prune_block(index: int, _block, stats: dict) -> None:
        mine = [i for i, b in enumerate(block_of) if b == index]
        if not mine:
            return
        gs = [groups[i] for i in mine]
        scores = _score_groups(model, [views[i] for i in mine], scorer, stats, primary)
        drops, notes = decide(model, adapter, gs, scores, 0.0, s, [ratios[i] for i in mine])
        decision = validate(model, list(zip(gs, drops)), graph.param_shapes, adapter)
        viewed = [(views[i], units) for i, (_g, units) in zip(mine, decision)]
        weights, deltas = {}, {}
        if compensate == "refit":
            weights, deltas = refits(model, viewed, stats)
        elif compensate:
            deltas = compensation(model, viewed, stats)
        deltas = _biases_that_fit(model, deltas, notes)
        write_weights(model, weights)
        add_biases(model, deltas)
        soft_zero(model, decision, shapes=graph.param_shapes)
        done.decision += decision
        done.bias_deltas.update(deltas)
        done.weights.update(weights)
        done.notes += notes

    modules = dict(model.named_modules())
    per_block: list[dict] = [{} for _ in blocks]
    for view, b in zip(views, block_of):
        per_block[b].update({m.module: modules[m.module] for m in consumers(view)})
    try:
        run_blockwise(
            model, blocks, plan.calibration, per_block, needs, prune_block, mode="sequential",
            batch_size=plan.spec.calibration.batch_size, progress=plan.spec.progress,
            desc="structured (sequential)", taps=plan.taps,
        )  # fmt: skip
    except BaseException:
        snapshot.restore()
        raise
    done.snapshot = snapshot
    return done


def _pooled(stats_by: dict[str, dict[str, ModuleStats]]) -> dict[str, ModuleStats]:
    """Each consumer's statistics pooled over the tasks, token-weighted, where a statistic can be pooled
    (the input moments, all that mean compensation needs)."""
    modules = dict.fromkeys(m for stats in stats_by.values() for m in stats)
    out = {}
    for module in modules:
        st = pooled([stats[module] for stats in stats_by.values() if module in stats])
        if st is not None:
            out[module] = st
    return out


def apply_plan(model, adapter, graph, plan: StructuredDecision, mode: str) -> None:
    """Write a validated plan: biases first (positions refer to traced shapes), then the removal.
    A plan that sequential calibration already wrote as soft zeros only needs the removal."""
    if not plan.written:
        write_weights(model, plan.weights)
        add_biases(model, plan.bias_deltas)
        if mode != "hard":
            soft_zero(model, plan.decision, shapes=graph.param_shapes)
    if mode == "hard":
        remove(model, plan.decision, adapter=adapter, shapes=graph.param_shapes)


def prune_structured(plan: Plan) -> StructuredDecision:
    """Plan, then apply: nothing is written before every decision is validated. Experts are split into
    per-expert Linears meanwhile (:mod:`.experts`), so their statistics are per expert."""
    with split_experts(plan.experts):
        done = plan_structured(plan, plan.spec.task)
        try:
            apply_plan(plan.model, plan.adapter, plan.graph, done, plan.spec.structure.mode)
        except BaseException:
            if done.snapshot is not None:
                done.snapshot.restore()
            raise
    return done


def as_views(groups, splits) -> list[Group]:
    """Each group as the split experts' Linears see it (itself where it has no expert members), and the
    same for the groups its units are made of."""
    out = []
    for g in groups:
        v = view_group(g, splits)
        if g.unit_groups:
            v = dataclasses.replace(v, unit_groups=tuple(view_group(u, splits) for u in g.unit_groups))
        out.append(v)
    return out


__all__ = [
    "StructuredDecision",
    "apply_plan",
    "check_sequential",
    "plan_structured",
    "prune_structured",
    "dropped_outer",
]
