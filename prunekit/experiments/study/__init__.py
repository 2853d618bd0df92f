"""Pruning studies: how models of different families react to the same pruning, component by component.

See :func:`study` and ``prunekit study``; :func:`prune_component` prunes one named component of a model.
"""

from .outputs import figures, read_csv
from .run import prune_component, study

__all__ = ["study", "prune_component", "figures", "read_csv"]
