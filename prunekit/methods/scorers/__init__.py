"""Scorer registry. Adding a method is adding one module here that calls :func:`register_scorer`."""

from . import (  # noqa: F401  (each registers itself)
    besa,
    flap,
    gblm,
    magnitude,
    seap,
    sparsegpt,
    structured_baselines,
    taylor,
    wanda,
)
from .base import SCORERS, Scorer, get_scorer, register_scorer, unit_sum

__all__ = ["SCORERS", "Scorer", "get_scorer", "register_scorer", "unit_sum"]
