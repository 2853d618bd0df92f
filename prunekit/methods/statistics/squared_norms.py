"""Sum over calibration tokens of x_j² per input feature: Wanda's ||X_j||² (and FLAP's WIFN).

The sum runs in fp64 and is rounded to fp32 once, at the end, so that splitting the calibration set
over processes or batches (which changes the summation order) gives the same fp32 value, barring an
fp64 sum within 1e-16 of an fp32 rounding boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import BlockStatistic, ModuleStats


@dataclass(frozen=True)
class SquaredNorms(BlockStatistic[torch.Tensor]):
    """||X_j||² per input feature, fp32 (read it with the module's ``n_samples`` / ``n_tokens``)."""

    label: ClassVar[str] = "squared norms"

    def terms(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        xd = x.double()
        return ((xd * xd).sum(0),)

    def finalise(self, sums: Sequence[torch.Tensor], count: int) -> torch.Tensor:
        return sums[0].float()

    @classmethod
    def matrix_view(cls, value: torch.Tensor, features_on_rows: bool) -> torch.Tensor:
        return value.reshape(-1, 1) if features_on_rows else value.reshape(1, -1)


def activation_norms(stats: ModuleStats) -> torch.Tensor:
    """||X_j||₂ over calibration tokens, averaged over sequences (the scale only matters when a score
    mixes it with another term, as GBLM's does)."""
    return (stats[SquaredNorms] / max(1, int(stats.n_samples))).sqrt()
