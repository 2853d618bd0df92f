"""First-order Taylor importance of structured units (as in LLM-Pruner's element-wise variant).

Removing a weight w changes the loss by about -g·w, with g the gradient of the calibration loss. A
unit's score is the sum of |w·g| over every weight of the unit in every member of its group, so
producer rows, consumer columns and per-channel vectors (A_log, D, conv1d, norms) all count. It needs
one backward pass per calibration sequence over the whole model (:mod:`prunekit.engine.gradients`),
and an fp32 gradient accumulator per member parameter. Unlike FLAP's consumer-side metrics it also
scores groups whose channels have no consuming linear layer, such as Mamba-2's state dimensions.
"""

from __future__ import annotations

import torch

from ...graph.groups import Group
from ..statistics import GradientSums, ModuleStats
from .base import Scorer, register_scorer, unit_sum


@register_scorer
class Taylor(Scorer):
    name = "taylor"
    structures = ("structured",)

    def statistics(self):
        return (GradientSums(),)

    def unit_scores(self, group: Group, weights, stats=None) -> torch.Tensor:
        stats = stats or {}
        per_position = {}
        for m in group.members:
            grad = stats.get(m.module, ModuleStats()).param(GradientSums, m.attr)
            if grad is None:
                raise ValueError(f"taylor needs the gradient of {m.param} (group {group.name!r})")
            saliency = (weights[m.param].detach().float() * grad.float()).abs()
            other = [d for d in range(saliency.dim()) if d != m.dim]
            per_position[(m.param, m.dim)] = saliency.sum(dim=other) if other else saliency
        return unit_sum(group, per_position)
