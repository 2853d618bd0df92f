"""How many units each structured group loses: the budget arithmetic over model sizes.

The search itself (which units, under which constraints) is :mod:`prunekit.methods.budgets`; this module
feeds it the model's numbers -- parameters per unit, spared blocks, per-group ratios -- and applies the
spec's rounding.
"""

from __future__ import annotations

from ..graph.groups import Group
from ..methods.budgets import (
    equal_ties,
    global_drops,
    keep_min,
    logistic_ratios,
    per_layer_ratios,
    ratio_drops,
    round_kept,
    shortfall_notes,
)
from ..spec import LogisticSearch, PerLayerSearch, Search, Structured


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
        other = p.numel() // p.shape[m.dim] // (p.shape[0] if m.expert is not None else 1)
        total += len(m.positions) * other
    return total / group.num_units


def spare_blocks(model, adapter, groups, sparsity: float, dense_blocks, search: Search):
    """Leave the first and last blocks dense and take the requested share of *all* targeted parameters
    from the others (so 50 % still means half of the targeted weights). Returns the groups left and
    the ratio that applies to them."""
    if not dense_blocks:
        return groups, sparsity
    first, last = (dense_blocks, dense_blocks) if isinstance(dense_blocks, int) else tuple(dense_blocks)
    if search.name == "logistic":
        raise ValueError("dense_blocks: the logistic schedule keeps its own first and last blocks dense")
    if search.name == "per-layer":
        raise ValueError("dense_blocks: with layer_sparsity, give those blocks a ratio of 0 instead")
    n = len(adapter.layers(model))
    spared = set(range(first)) | set(range(n - last, n))
    spanning = [g.name or g.role for g in groups if g.layer_index() is None]
    if spanning:
        raise ValueError(f"dense_blocks: groups {spanning[:3]} span every block and cannot be spared")
    rest = [g for g in groups if g.layer_index() not in spared]
    if not rest:
        raise ValueError(f"dense_blocks={dense_blocks!r} leaves none of the {n} blocks to prune")
    size = {id(g): g.num_units * per_unit_sizes(model, g, "groups") for g in groups}
    ratio = sparsity * sum(size.values()) / sum(size[id(g)] for g in rest)
    if ratio >= 1:
        raise ValueError(
            f"sparsity {sparsity} of the targeted weights cannot come from the {n - len(spared)} blocks "
            f"left after dense_blocks={dense_blocks!r} ({ratio:.2f} of them)"
        )
    return rest, ratio


def group_ratios(groups, sparsity: float, search: Search, n_blocks: int) -> list[float]:
    """The ratio each group's budget is taken from (every search but the global one)."""
    if isinstance(search, LogisticSearch):
        return logistic_ratios(groups, sparsity, **search.settings())
    if isinstance(search, PerLayerSearch):
        return per_layer_ratios(groups, sparsity, dict(search.ratios), n_blocks)
    return [sparsity for _ in groups]


def decide(model, adapter, groups, scores, sparsity, s: Structured, ratios=None):
    """Units to drop per group, and notes on every group that lost fewer units than asked."""
    gqa, search = s.gqa, s.search
    uneven = [adapter.runs_uneven_groups(model, g) for g in groups]
    notes: list[str] = []
    if search.name == "global":
        sizes = [per_unit_sizes(model, g, gqa) for g in groups]
        full = [per_unit_sizes(model, g, "groups") for g in groups]
        total = sum(g.num_units * f for g, f in zip(groups, full))
        kv = [(f - s) * g.units_per_outer if gqa == "heads" else 0.0 for g, f, s in zip(groups, full, sizes)]
        drops = global_drops(groups, scores, sizes, sparsity, gqa, total, uneven, kv)
    else:
        if ratios is None:
            ratios = group_ratios(groups, sparsity, search, len(adapter.layers(model)))
        drops = ratio_drops(groups, scores, ratios, gqa, uneven, strict=search.name == "per-layer")
        notes = shortfall_notes(groups, drops, ratios, gqa, uneven, adapter.name)
    if s.round_to > 1:
        drops = [round_kept(g, sc, d, s.round_to) for g, sc, d in zip(groups, scores, drops)]
    drops, tie_notes = equal_ties(groups, scores, drops)
    drops, kept_notes = keep_min(groups, scores, drops)
    return drops, notes + tie_notes + kept_notes
