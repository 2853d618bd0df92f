"""Scorer registry. Adding a method is adding one module here that calls :func:`register_scorer`."""

from . import flap, gblm, magnitude, sparsegpt, structured_baselines, wanda  # noqa: F401  (each registers itself)
from .base import SCORERS, Scorer, get_scorer, register_scorer, unit_sum

__all__ = ["SCORERS", "Scorer", "get_scorer", "register_scorer", "unit_sum"]
