"""What structured pruning writes back into a shrunk consumer, and the statistics each way needs.

Mean compensation (FLAP) folds W[:, R] · E[x_R] into the bias, so the layer's expected output over the
calibration inputs is unchanged; the refit (:mod:`.refit`) solves for new kept columns and bias by least
squares from the input's mean and second moment. The engine picks one by name, gathers its
``requires`` with the scorer's, and asks it per consumer; it never reads a statistic itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .refit import refit
from .statistics import Hessian, ModuleStats, Moments, Statistic


@dataclass(frozen=True)
class MeanBias:
    """FLAP's bias compensation from the consumer's input mean."""

    requires: frozenset[Statistic] = frozenset({Moments()})

    def applies(self, stats: ModuleStats | None) -> bool:
        """Whether ``stats`` can compensate this consumer (its input mean was gathered)."""
        return stats is not None and Moments in stats

    def bias_delta(self, weight: torch.Tensor, stats: ModuleStats, removed: torch.Tensor) -> torch.Tensor:
        """W[:, removed] @ mean(x[removed]), fp32."""
        w = weight.detach().float()
        mean = stats[Moments].mean.reshape(-1).float()
        return w[:, removed] @ mean[removed]


@dataclass(frozen=True)
class Refit:
    """The least-squares refit of the kept columns and the bias, from the input Hessian and mean."""

    requires: frozenset[Statistic] = frozenset({Moments(), Hessian()})

    def applies(self, stats: ModuleStats | None) -> bool:
        """Whether ``stats`` can refit this consumer (its input Hessian and mean were gathered)."""
        return stats is not None and Hessian in stats and Moments in stats

    def solve(
        self, weight: torch.Tensor, bias: torch.Tensor | None, stats: ModuleStats, removed: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The refitted weight (removed columns zeroed) and bias, fp64 (see :func:`.refit.refit`)."""
        return refit(weight, bias, stats[Hessian], stats[Moments].mean, removed)


#: the engine's ``bias_compensation`` / ``refit`` choice -> how it is done
COMPENSATIONS = {"mean": MeanBias(), "refit": Refit()}


def requirements(kind: str | None) -> frozenset[Statistic]:
    """The statistics compensation ``kind`` ("mean", "refit" or None: none) reads."""
    return COMPENSATIONS[kind].requires if kind else frozenset()
