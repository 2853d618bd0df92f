"""SEAP (Liang et al. 2025): task-specific structured pruning from per-task activation statistics.

A unit's score is its weighted input fluctuation (as FLAP's WIFV) measured on one task's calibration
texts, averaged over the unit's channels; blocks are pruned on a logistic schedule that keeps the
first and last blocks dense. With calibration ``{task: texts}``, ``task=`` picks that task's mask;
without it the scores of all tasks are blended (``task_weights``) into a generic mask. See
:func:`prunekit.task_masks` to hold several task masks and switch between them.
"""

from __future__ import annotations

import torch

from ..statistics import Moments
from .base import register_scorer
from .consumers import ConsumerScorer


@register_scorer
class SEAP(ConsumerScorer):
    name = "seap"
    default_structure_search = "logistic"
    reduce = "mean"

    def statistics(self):
        return (Moments(),)

    def column_metric(self, group, w, st) -> torch.Tensor:
        return st[Moments].var.reshape(-1) * (w * w).sum(0)  # WIFV, as FLAP
