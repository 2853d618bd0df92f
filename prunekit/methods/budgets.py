"""How many units each structured group loses: the budgets of the searches.

- ``uniform`` (FLAP's UL-UM, Wanda-sp): ``int(n * ratio)`` units of every group, never more
  (:func:`prunekit.methods.select.budget`).
- ``logistic`` (SEAP) and ``per-layer``: a ratio per block, then as uniform.
- ``global`` (FLAP's AL-AM): one threshold over scores that share a scale across groups
  (``Scorer.comparable_unit_scores``), chosen so that the removed *parameters* are the requested share of
  the targeted groups' parameters; each unit weighs what removing it saves.

A budget the family's code cannot run (uneven heads per KV group in a family that repeats KV heads
uniformly, every unit of a group) is reduced to what it can, and the reduction is reported as a note
naming the group, never made silently.
"""

from __future__ import annotations

import math

import torch

from ..graph.groups import Group
from .select import budget, lowest_units, units_to_drop


def _grouped(group: Group) -> bool:
    return bool(group.num_outer and group.num_outer != group.num_units)


def asked(group: Group, ratio: float, gqa: str) -> int:
    """Units a ratio asks of ``group`` before any family constraint (whole KV groups under "groups")."""
    if _grouped(group) and gqa == "groups":
        return budget(group.num_outer, ratio) * group.units_per_outer
    return budget(group.num_units, ratio)


def ratio_drops(groups, scores, ratios, gqa: str, uneven: list[bool], strict: bool = False):
    """Per-group ratios: the lowest ``asked`` units of each group (with ``strict``, a ratio that would
    empty a group is an error naming it)."""
    return [
        units_to_drop(g, s, r, gqa=gqa, strict=strict, uneven=u)
        for g, s, r, u in zip(groups, scores, ratios, uneven)
    ]


def global_drops(
    groups, scores, sizes, sparsity: float, gqa: str, total: float | None = None, uneven=None, kv_sizes=None
) -> list[torch.Tensor]:
    """AL-AM: the lowest comparable scores across all groups, while the removed parameters stay within
    ``sparsity`` of ``total`` (default: the sum of ``sizes`` over all units).

    ``sizes[g]`` is what one unit of group ``g`` saves; ``kv_sizes[g]`` what its KV head saves on top
    when the unit is the last query head of that KV head (uneven "heads" policy), so the share removed
    is counted exactly and never exceeds the request. Groups that must lose heads in equal numbers per
    KV group (or whole groups) are rounded down first; their unspent budget goes to the others.
    """
    uneven = list(uneven) if uneven is not None else [True] * len(groups)
    kv_sizes = list(kv_sizes) if kv_sizes is not None else [0.0] * len(groups)
    z = torch.cat([s.double() for s in scores])
    owner = torch.cat([torch.full((g.num_units,), i, dtype=torch.long) for i, g in enumerate(groups)])
    local = torch.cat([torch.arange(g.num_units) for g in groups])
    order = torch.argsort(z, stable=True).tolist()  # lowest first
    if total is None:
        total = sum(float(sz) * g.num_units for g, sz in zip(groups, sizes))
    target = sparsity * total
    free = [not _grouped(g) or (gqa == "heads" and u) for g, u in zip(groups, uneven)]
    # groups with a step: the threshold's count, rounded down to the step
    counts = _greedy(groups, order, owner, local, sizes, [0.0] * len(groups), target, lambda gi: True)[0]
    spent = 0.0
    for gi, group in enumerate(groups):
        if free[gi]:
            counts[gi] = 0
            continue
        step = group.units_per_outer if gqa == "groups" else group.num_outer
        counts[gi] = (min(counts[gi], group.num_units - 1) // step) * step
        spent += counts[gi] * sizes[gi]
    rest = target - spent
    _counts, chosen = _greedy(groups, order, owner, local, sizes, kv_sizes, rest, lambda gi: free[gi])
    return [
        torch.tensor(sorted(chosen[gi]), dtype=torch.long)
        if free[gi]
        else lowest_units(g, s, counts[gi], gqa, uneven[gi])
        for gi, (g, s) in enumerate(zip(groups, scores))
    ]


def _greedy(groups, order, owner, local, sizes, kv_sizes, budget_left: float, eligible):
    """Take units in score order while they fit the budget (skipping any that would overshoot it);
    every group keeps one unit. Returns the count and the chosen local indices per group."""
    counts = [0] * len(groups)
    chosen: list[list[int]] = [[] for _ in groups]
    left = [[g.units_per_outer] * g.num_outer if g.num_outer else [] for g in groups]
    spent, cheapest = 0.0, min((float(x) for x in sizes), default=0.0)
    for idx in order:
        if budget_left - spent < cheapest:
            break
        gi = int(owner[idx])
        if not eligible(gi) or counts[gi] >= groups[gi].num_units - 1:
            continue
        unit = int(local[idx])
        outer = unit // groups[gi].units_per_outer if left[gi] else None
        cost = float(sizes[gi])
        if outer is not None and kv_sizes[gi] and left[gi][outer] == 1:
            cost += float(kv_sizes[gi])
        if spent + cost > budget_left:
            continue
        spent += cost
        counts[gi] += 1
        chosen[gi].append(unit)
        if outer is not None:
            left[gi][outer] -= 1
    return counts, chosen


def shortfall_notes(groups, drops, ratios, gqa: str, uneven: list[bool], family: str) -> list[str]:
    """One line for every group that loses fewer units than its ratio asks, and why."""
    notes = []
    for g, d, r, u in zip(groups, drops, ratios, uneven):
        want, got = asked(g, r, gqa), int(d.numel())
        if got >= want:
            continue
        if want >= g.num_units:
            why = "every group keeps at least one unit"
        elif _grouped(g) and gqa == "heads" and not u:
            why = f"the {family} family needs the same number of heads in each of its {g.num_outer} groups"
        else:
            why = "whole KV groups only" if gqa == "groups" else "rounding"
        notes.append(f"{g.name}: {want} of {g.num_units} units asked, {got} removed ({why})")
    return notes


def equal_ties(groups, scores, drops) -> tuple[list[torch.Tensor], list[str]]:
    """Groups that share a ``tie`` (the experts of one layer, whose channels live in one tensor) lose
    the same count: the mean of their counts, rounded down (never more than asked), each its lowest."""
    out, notes = list(drops), []
    ties: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        if g.tie:
            ties.setdefault(g.tie, []).append(i)
    for tie, members in ties.items():
        counts = [int(out[i].numel()) for i in members]
        if len(set(counts)) <= 1:
            continue
        k = sum(counts) // len(counts)
        for i in members:
            out[i] = lowest_units(groups[i], scores[i], k)
        notes.append(f"{tie}: {len(members)} experts asked {min(counts)}-{max(counts)} units each; "
                     f"every expert loses {k} (they share one tensor)")  # fmt: skip
    return out, notes


def keep_min(groups, scores, drops) -> tuple[list[torch.Tensor], list[str]]:
    """Every group keeps its ``min_kept`` units (a router its top-k experts) and a multiple of
    ``kept_multiple``: fewer of its lowest units go, and a note says so where that changes the count."""
    out, notes = list(drops), []
    for i, g in enumerate(groups):
        most = g.num_units - max(1, g.min_kept)
        asked_for = int(out[i].numel())
        k = min(asked_for, most)
        step = max(1, g.kept_multiple)
        k = max(0, g.num_units - -(-(g.num_units - k) // step) * step)  # keep the next multiple up
        if k == asked_for:
            continue
        why = f"it keeps at least {g.min_kept}" if asked_for > most else f"it keeps a multiple of {step}"
        who = f"{g.tie} (each expert)" if g.tie else g.name  # the tied experts of a layer: one note
        note = f"{who}: {asked_for} of {g.num_units} units asked, {k} removed ({why})"
        if note not in notes:
            notes.append(note)
        out[i] = lowest_units(g, scores[i], k)
    return out, notes


def round_kept(group: Group, scores: torch.Tensor, drops: torch.Tensor, multiple: int) -> torch.Tensor:
    """Keep a multiple of ``multiple`` channels (nearest, at least one multiple) so that shapes stay
    friendly to kernels and to N:M patterns applied afterwards. Head groups are left as they are."""
    if group.kind != "channels" or group.num_units <= multiple:
        return drops
    kept = group.num_units - len(drops)
    target = min(group.num_units, max(multiple, int(kept / multiple + 0.5) * multiple))
    return lowest_units(group, scores, group.num_units - target)


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
