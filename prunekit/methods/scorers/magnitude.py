"""Magnitude pruning: the weight's absolute value, or a unit's L2 norm over every member slice."""

from __future__ import annotations

import torch

from ...graph.groups import Group
from ..statistics import ModuleStats
from .base import Scorer, register_scorer, unit_sum


def slice_sq_norms(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum of squares of every slice of ``weight`` along ``dim`` (fp32 whatever the weight dtype)."""
    w = weight.detach().float()
    if w.dim() == 1:
        return w * w
    other = [d for d in range(w.dim()) if d != dim]
    return (w * w).sum(dim=other)


@register_scorer
class Magnitude(Scorer):
    """|W| for single weights; for a unit, the L2 norm of all of its weights across the group."""

    name = "magnitude"

    def weight_scores(self, weight: torch.Tensor, stats: ModuleStats | None = None) -> torch.Tensor:
        return weight.detach().abs().float()

    def unit_scores(self, group: Group, weights, stats=None) -> torch.Tensor:
        per_position = {(m.param, m.dim): slice_sq_norms(weights[m.param], m.dim) for m in group.members}
        return unit_sum(group, per_position).sqrt()
