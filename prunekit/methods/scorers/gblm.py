"""GBLM-Pruner (Das et al. 2023): Wanda's |W|·||X|| plus a gradient term |W|·G.

G is the l2 norm over calibration sequences of each sequence's (scaled) loss gradient, see
:mod:`prunekit.methods.statistics.gradient_norms`; ``scale`` (default 100, as in the paper's code) sets
the balance of the two terms together with Wanda's per-sequence averaging of ||X||². The scorer puts its
``scale`` into the :class:`~prunekit.methods.statistics.GradientNorms` it declares.
"""

from __future__ import annotations

import torch

from ..statistics import GradientNorms, SquaredNorms, activation_norms
from .base import Scorer, register_scorer


@register_scorer
class GBLM(Scorer):
    name = "gblm"
    options = {"scale": 100.0}
    default_granularity = "row"

    def statistics(self):
        return (SquaredNorms(), GradientNorms(scale=float(self.config["scale"])))

    def weight_scores(self, weight, stats=None) -> torch.Tensor:
        grad = None if stats is None else stats.param(GradientNorms, "weight")
        if stats is None or SquaredNorms not in stats or grad is None:
            raise ValueError("gblm needs activation statistics and gradients for every weight it scores")
        w = weight.detach().abs().float()
        return w * activation_norms(stats) + w * grad.reshape(w.shape).float()
