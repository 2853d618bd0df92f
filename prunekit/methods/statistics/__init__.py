"""Calibration statistics, one class per statistic (one small module each) on a shared base.

A scorer declares the statistics it reads (``Scorer.requires``, instances such as ``SquaredNorms()``);
the engine gathers exactly those, by forward hooks block by block (:attr:`Scope.BLOCK`) or by one
full-model backward per sequence (:attr:`Scope.MODEL`), sums them over ranks and hands each module's
results back as a :class:`ModuleStats` keyed by statistic class. Adding a statistic is adding a module
here with a :class:`BlockStatistic` or :class:`ModelStatistic` subclass.
"""

from .base import (
    Accumulator,
    BlockStatistic,
    ModelStatistic,
    ModuleStats,
    Scope,
    Statistic,
    of_scope,
    ordered,
    pooled,
)
from .gradient_norms import GradientNorms
from .gradient_sums import GradientSums
from .hessian import Hessian, relative_error
from .moments import MeanVar, Moments
from .squared_norms import SquaredNorms, activation_norms

__all__ = [
    "Accumulator",
    "BlockStatistic",
    "GradientNorms",
    "GradientSums",
    "Hessian",
    "MeanVar",
    "ModelStatistic",
    "ModuleStats",
    "Moments",
    "Scope",
    "SquaredNorms",
    "Statistic",
    "activation_norms",
    "of_scope",
    "ordered",
    "pooled",
    "relative_error",
]
