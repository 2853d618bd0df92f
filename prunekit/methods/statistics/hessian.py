"""The input Hessian of a layer's squared output error, H = 2XᵀX/n over calibration tokens (SparseGPT).

XᵀX is summed in fp32 (its size makes fp64 costly), so unlike the per-feature sums it depends on the
summation order: SparseGPT splits over processes match only to tolerance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import BlockStatistic


@dataclass(frozen=True)
class Hessian(BlockStatistic[torch.Tensor]):
    """2XᵀX/n, fp32, ``[features, features]``."""

    label: ClassVar[str] = "hessian"

    def terms(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (x.t() @ x,)

    def finalise(self, sums: Sequence[torch.Tensor], count: int) -> torch.Tensor:
        return sums[0] * (2.0 / max(1, count))


def relative_error(w_old: torch.Tensor, w_new: torch.Tensor, hessian: torch.Tensor) -> float:
    """||(W - Ŵ)X||² / ||WX||² from H = 2XXᵀ/n (the 2/n cancels); fp32, one product each."""
    h = hessian.float()
    d = w_old.float() - w_new.float()
    num = float(((d @ h) * d).sum())
    den = float(((w_old.float() @ h) * w_old.float()).sum())
    return num / den if den > 0 else 0.0
