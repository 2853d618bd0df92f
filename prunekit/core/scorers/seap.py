"""SEAP (Liang et al. 2025): task-specific structured pruning from per-task activation statistics.

A unit's score is its weighted input fluctuation (as FLAP's WIFV) measured on one task's calibration
texts, averaged over the unit's channels; blocks are pruned on a logistic schedule that keeps the
first and last blocks dense. With calibration ``{task: texts}``, ``task=`` picks that task's mask;
without it the scores of all tasks are blended (``task_weights``) into a generic mask. See
:func:`prunekit.task_masks` to hold several task masks and switch between them.
"""

from __future__ import annotations

import torch

from .base import Scorer, register_scorer
from .consumers import consumer_unit_scores


@register_scorer
class SEAP(Scorer):
    name = "seap"
    needs = frozenset({"mean", "var"})
    structures = ("structured",)
    default_structure_search = "logistic"

    def unit_scores(self, group, weights, stats=None) -> torch.Tensor:
        def wifv(w, st):
            return st["var"].reshape(-1) * (w * w).sum(0)

        return consumer_unit_scores(group, weights, stats or {}, wifv, reduce="mean")
