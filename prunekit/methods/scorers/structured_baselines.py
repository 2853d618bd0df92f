"""The structured baselines FLAP is compared with: Wanda-sp and magnitude-sp.

Both score a unit from its consumer's input columns, summed over the unit's channels:
Wanda-sp by mean_i |W_ij| · ||x_j||, magnitude-sp by the column norm ||W[:, j]||₂.
"""

from __future__ import annotations

import torch

from ..statistics import SquaredNorms
from .base import register_scorer
from .consumers import ConsumerScorer


@register_scorer
class WandaSP(ConsumerScorer):
    name = "wanda-sp"
    structured_calibration = "sequential"  # the reference recomputes each block's outputs once pruned

    def statistics(self):
        return (SquaredNorms(),)

    def column_metric(self, group, w, st) -> torch.Tensor:
        return w.abs().mean(0) * st[SquaredNorms].reshape(-1).sqrt()


@register_scorer
class MagnitudeSP(ConsumerScorer):
    name = "magnitude-sp"
    require_stats = False

    def column_metric(self, group, w, st) -> torch.Tensor:
        return w.norm(dim=0)
