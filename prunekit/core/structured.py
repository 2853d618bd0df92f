"""Structured pruning: score every unit of every targeted group, decide how many go where, remove them.

Calibrated scorers read the statistics of a group's *consumers*: the modules whose input dimension the
group occupies (``o_proj``/``down_proj``/Mamba's ``out_proj`` and ``x_proj``), gathered in one dense
block-wise pass, since every block is scored before any block is cut (as FLAP does).

How many units each group loses is the *structure*:

- ``"uniform"`` (FLAP's UL-UM): the same ratio in every group.
- ``"global"`` (FLAP's AL-AM): scores are standardised within each group, and one threshold is chosen
  across all groups so that the removed *parameters* are the requested share of the targeted groups'
  parameters (each unit weighs what removing it saves). Every group keeps at least one unit.

Bias compensation adds W[:, removed] · E[x_removed] to every consumer's bias (creating the bias when
the layer has none), so the expected output of each shrunk layer is unchanged on calibration data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..graph.groups import Group
from .calibration import run_blockwise
from .gradients import gradient_sums
from .select import units_to_drop
from .surgery import _validated as validate_decision
from .surgery import check_units, dropped_outer, member_positions, remove, soft_zero

STRUCTURES = ("uniform", "global", "logistic", "per-layer")


@dataclass
class StructuredPlan:
    decision: list[tuple[Group, torch.Tensor]] = field(default_factory=list)
    #: consumer module name -> bias delta to add (before removal)
    bias_deltas: dict[str, torch.Tensor] = field(default_factory=dict)


def consumers(group: Group) -> list:
    """Members on the consuming side: input columns of the layers that read the group's channels."""
    return [m for m in group.members if m.side == "in" and m.dim == 1 and m.attr == "weight"]


def consumer_stats(model, blocks, groups, needs, calibration, batch_size, progress, taps=None) -> dict:
    """Input statistics of every consumer module of ``groups``, from one dense block-wise pass."""
    if not needs:
        return {}
    names = {m.module for g in groups for m in consumers(g)}
    modules = dict(model.named_modules())
    block_names = {id(b): n for n, b in model.named_modules()}
    per_block = []
    for b in blocks:
        prefix = block_names[id(b)] + "."
        per_block.append({n: modules[n] for n in names if n.startswith(prefix)})
    stats: dict[str, dict] = {}

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


def global_drops(groups, scores, sizes, sparsity, gqa, total: float | None = None) -> list[torch.Tensor]:
    """AL-AM: one threshold over per-group standardised scores, weighted by parameters per unit.

    ``sizes`` are the parameters each unit's removal saves; the budget is ``sparsity`` of ``total``
    (default: the sum of ``sizes``), e.g. of all attention and MLP weights when key/value rows that
    cannot leave under the ``"heads"`` policy still count in what the ratio refers to.
    """
    std_scores, weights, owners = [], [], []
    for gi, s in enumerate(scores):
        s = s.double()
        z = (s - s.mean()) / (s.std() if s.numel() > 1 and s.std() > 0 else 1.0)
        std_scores.append(z)
        weights.append(torch.full_like(z, sizes[gi]))
        owners.append(torch.full((len(z),), gi, dtype=torch.long))
    z = torch.cat(std_scores)
    w = torch.cat(weights)
    owner = torch.cat(owners)
    order = torch.argsort(z, stable=True)  # lowest first
    budget = sparsity * (float(w.sum()) if total is None else total)
    cum = torch.cumsum(w[order], 0)
    n_drop = int(torch.searchsorted(cum, torch.tensor(budget, dtype=cum.dtype), right=True))
    counts = torch.bincount(owner[order[:n_drop]], minlength=len(groups)).tolist()
    grouped = [bool(g.num_outer and g.num_outer != g.num_units) for g in groups]
    for gi, group in enumerate(groups):
        counts[gi] = min(counts[gi], group.num_units - 1)
        if grouped[gi]:
            # grouped heads leave in equal numbers per KV group (or whole groups): round down to that step
            step = group.num_outer if gqa == "heads" else group.units_per_outer
            counts[gi] = (counts[gi] // step) * step
    # what rounding left unspent goes to the next-lowest units of freely divisible groups
    leftover = budget - sum(c * sizes[gi] for gi, c in enumerate(counts))
    seen = [0] * len(groups)
    for idx in order.tolist():
        gi = int(owner[idx])
        seen[gi] += 1
        if grouped[gi] or seen[gi] <= counts[gi] or counts[gi] >= groups[gi].num_units - 1:
            continue
        if sizes[gi] > leftover:
            continue
        counts[gi] += 1
        leftover -= sizes[gi]
    return [
        units_to_drop(group, s, k / group.num_units, gqa=gqa) for group, s, k in zip(groups, scores, counts)
    ]


def round_kept(group: Group, scores: torch.Tensor, drops: torch.Tensor, multiple: int) -> torch.Tensor:
    """Keep a multiple of ``multiple`` channels (nearest, at least one multiple) so that shapes stay
    friendly to kernels and to N:M patterns applied afterwards. Head groups are left as they are."""
    if group.kind != "channels" or group.num_units <= multiple:
        return drops
    kept = group.num_units - len(drops)
    target = min(group.num_units, max(multiple, int(kept / multiple + 0.5) * multiple))
    return units_to_drop(group, scores, (group.num_units - target) / group.num_units)


def per_unit_sizes(model, group: Group, gqa: str = "heads") -> float:
    """Parameters removed per unit of ``group``.

    Under the ``"heads"`` GQA policy every KV group keeps at least one query head, so its key/value
    rows never leave and do not count; under ``"groups"`` each query head carries its share of them.
    """
    total = 0.0
    for m in group.members:
        if m.per_outer and gqa == "heads" and group.num_outer != group.num_units:
            continue
        p = model.get_parameter(m.param)
        other = p.numel() // p.shape[m.dim]
        total += len(m.positions) * other
    return total / group.num_units


def compensation(model, plan_decision, stats) -> dict[str, torch.Tensor]:
    """Bias deltas W[:, removed] @ mean(x[removed]) for every consumer with statistics."""
    deltas: dict[str, torch.Tensor] = {}
    for group, units in plan_decision:
        for m in consumers(group):
            if m.module not in stats or "mean" not in stats[m.module]:
                continue
            pos = member_positions(m, group, units)
            if pos.numel() == 0:
                continue
            w = model.get_parameter(m.param).detach().float()
            mean = stats[m.module]["mean"].reshape(-1).float()
            delta = w[:, pos] @ mean[pos]
            deltas[m.module] = deltas.get(m.module, 0) + delta
    return deltas


@torch.no_grad()
def add_biases(model, deltas: dict[str, torch.Tensor]) -> list[str]:
    """Add each delta to its module's bias, creating a zero bias first where there is none."""
    created = []
    for name, delta in deltas.items():
        mod = model.get_submodule(name)
        if getattr(mod, "bias", None) is None:
            mod.bias = torch.nn.Parameter(
                torch.zeros(mod.weight.shape[0], dtype=mod.weight.dtype, device=mod.weight.device)
            )
            created.append(name)
        mod.bias.add_(delta.to(mod.bias.dtype).to(mod.bias.device))
    if created:
        recorded = list(getattr(model.config, "prunekit_added_biases", []) or [])
        model.config.prunekit_added_biases = sorted(set(recorded) | set(created))
    return created


def _score_groups(model, groups, scorer, stats, primary, progress, grads=None) -> list[torch.Tensor]:
    scores = []
    for group in tqdm(groups, desc="scoring groups", disable=not progress):
        weights = {p: model.get_parameter(p) for p in group.params}
        readers = [m for m in consumers(group) if m.module in primary] or consumers(group)
        group_stats = {m.module: stats[m.module] for m in readers if m.module in stats}
        if grads:  # parameter gradients ride along as "grad.<attr>" of each member's module
            for m in group.members:
                module_stats = group_stats.setdefault(m.module, {})
                group_stats[m.module] = {**module_stats, f"grad.{m.attr}": grads[m.param]}
        if scorer.needs and not group_stats:
            raise ValueError(
                f"method {scorer.name!r} needs consumer statistics, but group {group.name!r} "
                "has no consuming layer inside the blocks"
            )
        scores.append(scorer.unit_scores(group, weights, group_stats))
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


def plan_structured(
    model, adapter, graph, groups, scorer, sparsity, calibration, opts, progress
) -> StructuredPlan:
    """Score and decide without writing anything: the removals and bias deltas to apply.

    ``calibration`` is token ids, or ``{task: ids}`` for task-specific pruning (SEAP): statistics
    are gathered per task, and ``opts["task"]`` picks one task's scores, or (``None``) a blend of
    all tasks weighted by ``opts["task_weights"]``.
    """
    structure = opts.get("structure_search", "uniform")
    if structure not in STRUCTURES:
        raise ValueError(f"structure_search must be one of {STRUCTURES}, got {structure!r}")
    compensate = opts.get("bias_compensation")
    compensate = scorer.compensates if compensate is None else compensate
    if compensate and calibration is None:
        raise ValueError("bias compensation needs calibration data (or pass bias_compensation=False)")
    task = opts.get("task")
    if isinstance(calibration, dict):
        if task is not None and task not in calibration:
            raise ValueError(f"task {task!r} is not in the calibration dict (tasks: {sorted(calibration)})")
    elif task is not None:
        raise ValueError("task= needs calibration given as a dict {task: texts or token ids}")
    needs = scorer.needs | (frozenset({"mean"}) if compensate else frozenset())
    wants_grads = "param_grad" in needs
    needs = needs - {"param_grad"}
    blocks = adapter.layers(model)
    taps = adapter.stat_taps(model)
    primary = primary_consumers(graph)
    sources = calibration if isinstance(calibration, dict) else {None: calibration}
    stats_by, scores_by = {}, {}
    for name, ids in sources.items():
        stats_by[name] = consumer_stats(model, blocks, groups, needs, ids, opts["batch_size"], progress, taps)
        grads = None
        if wants_grads:
            params = {p: model.get_parameter(p) for g in groups for p in g.params}
            grads = gradient_sums(model, ids, params, progress=progress)
        scores_by[name] = _score_groups(model, groups, scorer, stats_by[name], primary, progress, grads)
    if isinstance(calibration, dict) and task is None:
        scores = _blend(scores_by, opts.get("task_weights"))
        stats = _pooled(stats_by)
    else:
        key = task if isinstance(calibration, dict) else None
        scores, stats = scores_by[key], stats_by[key]

    if structure == "global":
        sizes = [per_unit_sizes(model, g, opts["gqa"]) for g in groups]
        total = sum(g.num_units * per_unit_sizes(model, g, "groups") for g in groups)
        drops = global_drops(groups, scores, sizes, sparsity, opts["gqa"], total)
    elif structure == "logistic":
        ratios = logistic_ratios(groups, sparsity, **opts.get("logistic", {}))
        drops = [units_to_drop(g, s, r, gqa=opts["gqa"]) for g, s, r in zip(groups, scores, ratios)]
    elif structure == "per-layer":
        ratios = per_layer_ratios(groups, sparsity, opts["layer_sparsity"], len(blocks))
        drops = [
            units_to_drop(g, s, r, gqa=opts["gqa"], strict=True) for g, s, r in zip(groups, scores, ratios)
        ]
    else:
        drops = [units_to_drop(g, s, sparsity, gqa=opts["gqa"]) for g, s in zip(groups, scores)]
    round_to = int(opts.get("round_to", 1))
    if round_to > 1:
        drops = [round_kept(g, s, d, round_to) for g, s, d in zip(groups, scores, drops)]
    plan = StructuredPlan([(g, check_units(g, u)) for g, u in zip(groups, drops)])
    validate_decision(model, plan.decision, graph.param_shapes)
    if compensate:
        plan.bias_deltas = compensation(model, plan.decision, stats)
    return plan


def _pooled(stats_by: dict) -> dict:
    """Token-weighted mean of the per-task means (all compensation needs)."""
    out: dict[str, dict] = {}
    for stats in stats_by.values():
        for module, st in stats.items():
            if "mean" not in st:
                continue
            acc = out.setdefault(module, {"sum": 0, "n": 0})
            acc["sum"] = acc["sum"] + st["mean"].double() * st["n_tokens"]
            acc["n"] += st["n_tokens"]
    return {m: {"mean": (a["sum"] / max(1, a["n"])).float()} for m, a in out.items()}


def per_layer_ratios(groups, sparsity: float, layer_sparsity: dict[int, float], n_blocks: int) -> list[float]:
    """The user's ratio for each group's block; ``sparsity`` for blocks (and block-less groups) not listed."""
    unknown = sorted(i for i in layer_sparsity if i >= n_blocks)
    if unknown:
        raise ValueError(f"layer_sparsity names block(s) {unknown}, but the model has {n_blocks} blocks")
    return [layer_sparsity.get(g.layer_index(), sparsity) for g in groups]


def logistic_ratios(groups, sparsity: float, first: int = 2, last: int = 2, k: float = 1.2, x0: float = 0.3):
    """SEAP's layer schedule: the first/last blocks stay dense, the rest follow a logistic ramp.

    Block i of the L - first - last pruned ones gets λ / (1 + exp(-k (x_i - x0))), x_i = i / (n - 1),
    with λ found by bisection so that the mean over *all* blocks equals ``sparsity``.
    """
    import math

    layers = sorted({g.layer_index() for g in groups if g.layer_index() is not None})
    if not layers:
        return [sparsity for _ in groups]
    n = len(layers) - first - last
    if n <= 0:
        raise ValueError(
            f"logistic schedule: {first} + {last} protected blocks leave none of {len(layers)} to prune"
        )
    target = sparsity * len(layers) / n
    if target >= 1:
        raise ValueError(
            f"sparsity {sparsity} cannot be reached with {first} + {last} of {len(layers)} blocks dense"
        )
    xs = [i / (n - 1) if n > 1 else 0.0 for i in range(n)]
    shape = [1 / (1 + math.exp(-k * (x - x0))) for x in xs]
    lo, hi = 0.0, 10.0
    for _ in range(100):
        lam = (lo + hi) / 2
        mean = sum(min(lam * v, 0.999) for v in shape) / n
        lo, hi = (lam, hi) if mean < target else (lo, lam)
    per_layer = {layer: 0.0 for layer in layers}
    for layer, v in zip(layers[first : first + n], shape):
        per_layer[layer] = min(lo * v, 0.999)
    return [per_layer.get(g.layer_index(), sparsity) for g in groups]


def apply_plan(model, adapter, graph, plan: StructuredPlan, mode: str) -> None:
    """Write a validated plan: biases first (positions refer to traced shapes), then the removal."""
    add_biases(model, plan.bias_deltas)
    if mode == "hard":
        remove(model, plan.decision, adapter=adapter, shapes=graph.param_shapes)
    else:
        soft_zero(model, plan.decision, shapes=graph.param_shapes)


def prune_structured(
    model, adapter, graph, groups, scorer, sparsity, calibration, opts, progress
) -> StructuredPlan:
    """Plan, then apply: nothing is written before every decision is validated."""
    plan = plan_structured(model, adapter, graph, groups, scorer, sparsity, calibration, opts, progress)
    apply_plan(model, adapter, graph, plan, opts["mode"])
    return plan


__all__ = [
    "STRUCTURES",
    "StructuredPlan",
    "apply_plan",
    "plan_structured",
    "prune_structured",
    "dropped_outer",
]
