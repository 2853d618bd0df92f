"""GBLM-Pruner's gradient term G = sqrt(sum_s (scale · dL_s/dW)²) per weight.

dL_s/dW is the gradient of sequence s's mean next-token loss; the sum runs over calibration sequences
in fp32, and the square root is taken once every rank's sum is in. ``scale`` (100 in the paper's code)
is a setting of the statistic, chosen by the scorer that declares it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import ModelStatistic


@dataclass(frozen=True)
class GradientNorms(ModelStatistic[torch.Tensor]):
    """The l2 norm over sequences of each weight's scaled loss gradient (the parameter's shape, fp32)."""

    scale: float = 100.0
    label: ClassVar[str] = "gradient norms"

    def terms(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        g = x.float() * self.scale
        return (g * g,)

    def finalise(self, sums: Sequence[torch.Tensor], count: int) -> torch.Tensor:
        return sums[0].sqrt()
