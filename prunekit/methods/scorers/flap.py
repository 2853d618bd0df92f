"""FLAP (An et al. 2024): fluctuation-based structured pruning with bias compensation.

A channel is scored by how much its input to the output projection fluctuates around its mean over
calibration tokens, since a nearly constant input can be replaced by its mean folded into the bias:

- ``IFV``: Var[x_j]
- ``WIFV`` (default): Var[x_j] · ||W[:, j]||²
- ``WIFN``: mean_i |W_ij| · ||x_j||

A unit's score is the mean over its channels (head scores are squared per channel first, as in the
paper's code). FLAP's adaptive structure (AL-AM, ``structure_search="global"``) and bias
compensation are the defaults.
"""

from __future__ import annotations

import torch

from ..statistics import Moments, SquaredNorms
from .base import register_scorer
from .consumers import ConsumerScorer

_METRICS = {
    "IFV": lambda w, st: st[Moments].var.reshape(-1),
    "WIFV": lambda w, st: st[Moments].var.reshape(-1) * (w * w).sum(0),
    "WIFN": lambda w, st: w.abs().mean(0) * (st[SquaredNorms].reshape(-1) / max(1, int(st.n_tokens))).sqrt(),
}


@register_scorer
class FLAP(ConsumerScorer):
    name = "flap"
    options = {"metric": "WIFV"}
    compensates = True
    default_structure_search = "global"
    reduce = "mean"

    def __init__(self, **options) -> None:
        super().__init__(**options)
        if self.config["metric"] not in _METRICS:
            raise ValueError(f"flap metric must be one of {sorted(_METRICS)}, got {self.config['metric']!r}")

    def statistics(self):
        """WIFN reads input norms; IFV and WIFV the input variance."""
        return (SquaredNorms(),) if self.config["metric"] == "WIFN" else (Moments(),)

    def column_metric(self, group, w, st) -> torch.Tensor:
        value = _METRICS[self.config["metric"]](w, st)
        return value**2 if group.kind == "heads" else value  # heads: squared per channel, as FLAP's code
