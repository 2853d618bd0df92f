"""Per-unit scores from a group's consuming layers (the input columns of o_proj, down_proj, out_proj).

Structured scorers in the FLAP family look at the layer that *reads* the channels: a channel matters
as much as what it contributes to that layer's output. They define a per-column metric from the
consumer's weight and input statistics; this module sums (or averages) it over each unit's columns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from ...graph.groups import Group
from ..statistics import ModuleStats
from .base import Scorer, zscore

ColumnMetric = Callable[[torch.Tensor, ModuleStats], torch.Tensor]


def consumer_unit_scores(
    group: Group,
    weights: Mapping[str, torch.Tensor],
    stats: Mapping[str, ModuleStats],
    metric: ColumnMetric,
    reduce: str = "sum",
    require_stats: bool = True,
    standardize: bool = False,
) -> torch.Tensor:
    """Aggregate ``metric(W, stats)`` (one value per input column) over each unit's columns.

    ``standardize`` z-scores the columns of each consumer first (over the columns the group occupies,
    unbiased std, as FLAP's code does per layer), so that unit scores of different groups and kinds
    (heads of 64 columns, single MLP channels) share one scale for a global threshold.
    """
    total = torch.zeros(group.num_units, dtype=torch.float64)
    count = torch.zeros(group.num_units, dtype=torch.float64)
    used = 0
    for m in group.members:
        if not m.consumes:
            continue
        st = stats.get(m.module)
        if st is None and require_stats:
            continue
        st = st or ModuleStats()
        column = (
            metric(m.as_consumer(weights[m.param]).detach().float(), st).double().cpu()
        )  # small: one per column
        values = column[m.positions]
        if standardize:
            values = zscore(values)
        units = m.units
        if m.per_outer:  # a column shared by an outer unit's query heads counts for each of them
            per = group.units_per_outer
            units = (units.unsqueeze(1) * per + torch.arange(per)).reshape(-1)
            values = values.repeat_interleave(per)
        total.index_add_(0, units, values)
        count.index_add_(0, units, torch.ones_like(values))
        used += 1
    if used == 0:
        raise ValueError(f"group {group.name!r} has no consuming layer with statistics to score it")
    return total / count.clamp_min(1) if reduce == "mean" else total


class ConsumerScorer(Scorer):
    """A structured scorer defined by one metric per consumer input column (FLAP, Wanda-sp, ...)."""

    structures = ("structured",)
    #: how a unit's columns combine into its score ("sum" or "mean")
    reduce = "sum"
    #: False for weight-only metrics that need no calibration statistics
    require_stats = True

    def column_metric(self, group: Group, w: torch.Tensor, st: ModuleStats) -> torch.Tensor:
        """One value per input column of the consumer weight ``w`` (higher: more important)."""
        raise NotImplementedError

    def _metric(self, group: Group) -> ColumnMetric:
        return lambda w, st: self.column_metric(group, w, st)

    def unit_scores(self, group, weights, stats=None) -> torch.Tensor:
        return consumer_unit_scores(
            group, weights, stats or {}, self._metric(group), self.reduce, self.require_stats
        )

    def comparable_unit_scores(self, group, weights, stats=None) -> torch.Tensor:
        """Mean z-score of a unit's columns: FLAP's AL-AM standardises channels, not unit means."""
        return consumer_unit_scores(
            group, weights, stats or {}, self._metric(group), "mean", self.require_stats, standardize=True
        )
