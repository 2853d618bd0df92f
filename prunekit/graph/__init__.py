"""Tracing a model into a dependency graph of prunable groups."""

from .graph import DependencyGraph, trace
from .groups import Group, Member
from .ops import UnmappedOpError

__all__ = ["DependencyGraph", "Group", "Member", "UnmappedOpError", "trace"]
