"""prunekit: structured, semi-structured and unstructured pruning for transformers and state-space LMs.

Entry points: :func:`prune` (one call for every method), :func:`trace` (the dependency graph of
prunable groups), :func:`prune_offloaded` (models larger than memory, block by block from disk),
:func:`prune_component` (one named part of a block), the modules :mod:`prunekit.sweep` and
:mod:`prunekit.study` (methods x sparsities; per component and family), and the modules
:mod:`prunekit.models` (offline models), :mod:`prunekit.data` (calibration and evaluation text) and
:mod:`prunekit.eval` (perplexity, JS divergence).
"""

from . import data, eval, models
from .api import prune, task_masks
from .big import prune_offloaded
from .core.report import PruneReport
from .core.scorers import SCORERS, Scorer, register_scorer
from .core.surgery import SurgeryError, remove, soft_zero
from .graph import DependencyGraph, Group, Member, UnmappedOpError, trace
from .saving import from_pretrained, save_pretrained
from .study import prune_component

__version__ = "0.1.0"

__all__ = [
    "SCORERS",
    "DependencyGraph",
    "Group",
    "Member",
    "PruneReport",
    "Scorer",
    "SurgeryError",
    "UnmappedOpError",
    "data",
    "eval",
    "from_pretrained",
    "models",
    "prune",
    "prune_component",
    "prune_offloaded",
    "register_scorer",
    "remove",
    "save_pretrained",
    "soft_zero",
    "task_masks",
    "trace",
]
