"""The gradient of the summed calibration loss, sum_s dL_s/dW, per parameter (first-order Taylor).

Removing a weight w changes the loss by about -g·w (``L(W - w) - L(W) ≈ -g·w``); summed in fp32 over
calibration sequences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import ModelStatistic


@dataclass(frozen=True)
class GradientSums(ModelStatistic[torch.Tensor]):
    """sum over sequences of dL_s/dW (the parameter's shape, fp32)."""

    label: ClassVar[str] = "gradient sums"

    def terms(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (x.float(),)

    def finalise(self, sums: Sequence[torch.Tensor], count: int) -> torch.Tensor:
        return sums[0]
