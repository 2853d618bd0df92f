"""The structured baselines FLAP is compared with: Wanda-sp and magnitude-sp.

Both score a unit from its consumer's input columns, summed over the unit's channels:
Wanda-sp by mean_i |W_ij| · ||x_j||, magnitude-sp by the column norm ||W[:, j]||₂.
"""

from __future__ import annotations

import torch

from .base import Scorer, register_scorer
from .consumers import consumer_unit_scores


@register_scorer
class WandaSP(Scorer):
    name = "wanda-sp"
    needs = frozenset({"sq_norm"})
    structures = ("structured",)

    def unit_scores(self, group, weights, stats=None) -> torch.Tensor:
        def metric(w, st):
            return w.abs().mean(0) * st["sq_norm"].reshape(-1).sqrt()

        return consumer_unit_scores(group, weights, stats or {}, metric)


@register_scorer
class MagnitudeSP(Scorer):
    name = "magnitude-sp"
    structures = ("structured",)

    def unit_scores(self, group, weights, stats=None) -> torch.Tensor:
        return consumer_unit_scores(group, weights, {}, lambda w, st: w.norm(dim=0), require_stats=False)
