"""GBLM-Pruner (Das et al. 2023): Wanda's |W|·||X|| plus a gradient term |W|·G.

G is the l2 norm over calibration sequences of each sequence's (scaled) loss gradient, see
:mod:`prunekit.engine.gradients`; ``scale`` (default 100, as in the paper's code) sets the balance of the
two terms together with Wanda's per-sequence averaging of ||X||².
"""

from __future__ import annotations

import torch

from .base import Scorer, register_scorer
from .wanda import activation_norms


@register_scorer
class GBLM(Scorer):
    name = "gblm"
    needs = frozenset({"sq_norm", "grad"})
    options = {"scale": 100.0}
    default_granularity = "row"

    def weight_scores(self, weight, stats=None) -> torch.Tensor:
        if stats is None or "sq_norm" not in stats or "grad" not in stats:
            raise ValueError("gblm needs activation statistics and gradients for every weight it scores")
        w = weight.detach().abs().float()
        return w * activation_norms(stats) + w * stats["grad"].reshape(w.shape).float()
