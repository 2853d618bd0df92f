"""A request resolved on one model: what the executors read, so they all take one argument."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..families import Adapter
from ..graph import DependencyGraph, Group
from ..methods.scorers import Scorer
from ..spec import PruneSpec
from .calibration import BlockStream
from .experts import ExpertsSplit


@dataclass
class Plan:
    """A request resolved on one model: everything :func:`execute` needs, nothing written yet."""

    model: torch.nn.Module
    spec: PruneSpec
    scorer: Scorer
    adapter: Adapter
    #: token ids [N, L], ``{task: ids}`` (task-specific structured pruning) or None (weights only)
    calibration: torch.Tensor | dict[str, torch.Tensor] | None
    blocks: list[torch.nn.Module]
    layer_names: list[str]
    #: unstructured and N:M: module name -> module whose weight is pruned (per-expert Linears included)
    targeted: dict[str, torch.nn.Module] = field(default_factory=dict)
    #: unstructured and N:M: the experts modules whose per-expert Linears are targeted (split while pruning)
    experts: list[ExpertsSplit] = field(default_factory=list)
    #: structured: the traced graph and the groups to prune
    graph: DependencyGraph | None = None
    groups: list[Group] = field(default_factory=list)
    #: seconds spent planning (tracing, resolving targets): part of the report's time
    seconds: float = 0.0
    #: where blocks live between uses (None: all in memory)
    stream: BlockStream | None = None

    @property
    def expert_targets(self) -> set[str]:
        """The targeted per-expert matrices' names (see :mod:`.experts`)."""
        return {n for s in self.experts for n in s.targets() if n in self.targeted}

    @property
    def taps(self) -> dict:
        """The adapter's statistic taps (modules whose inputs no hook sees)."""
        return self.adapter.stat_taps(self.model)
