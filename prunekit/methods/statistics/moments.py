"""Per input feature mean and population variance over calibration tokens (FLAP's fluctuation; the
mean also feeds bias compensation and the refit).

Both come from fp64 sums of x and x², rounded to fp32 at the end (see :mod:`.squared_norms`); the
variance E[x²] - E[x]² is clamped at 0 against rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import BlockStatistic


@dataclass(frozen=True, eq=False)
class MeanVar:
    """The value of :class:`Moments`: fp32 per-feature ``mean`` and ``var``."""

    mean: torch.Tensor
    var: torch.Tensor


@dataclass(frozen=True)
class Moments(BlockStatistic[MeanVar]):
    """E[x_j] and Var[x_j] (population) per input feature."""

    label: ClassVar[str] = "moments"

    def terms(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        xd = x.double()
        return (xd.sum(0), (xd * xd).sum(0))

    def finalise(self, sums: Sequence[torch.Tensor], count: int) -> MeanVar:
        n = max(1, count)
        mean = sums[0] / n
        return MeanVar(mean.float(), (sums[1] / n - mean * mean).clamp_min(0).float())

    @classmethod
    def matrix_view(cls, value: MeanVar, features_on_rows: bool) -> MeanVar:
        shape = (-1, 1) if features_on_rows else (1, -1)
        return MeanVar(value.mean.reshape(shape), value.var.reshape(shape))

    @classmethod
    def pool(cls, parts: Sequence[tuple[int, MeanVar]]) -> MeanVar:
        """Token-weighted moments of the union of the calibration sets (law of total variance), fp64."""
        total = max(1, sum(n for n, _v in parts))
        mean = 0
        for n, v in parts:
            mean = mean + v.mean.double() * n
        mean = mean / total
        var = 0
        for n, v in parts:
            var = var + (v.var.double() + (v.mean.double() - mean) ** 2) * n
        return MeanVar(mean.float(), (var / total).float())
