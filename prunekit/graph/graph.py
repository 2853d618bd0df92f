"""The public tracing entry point: model -> :class:`DependencyGraph`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import networkx as nx
import torch

from .build import build_groups
from .groups import Group
from .tracer import export_model, propagate


class GroupLabeler(Protocol):
    """What tracing asks of a family adapter (:mod:`prunekit.families`)."""

    opaque_modules: dict[str, str]

    def role(self, group: Group, model: torch.nn.Module) -> str: ...

    def rejects(self, group: Group, model: torch.nn.Module) -> str | None: ...

    def declared_groups(self, model: torch.nn.Module) -> list[Group]:
        """Groups the family states where the trace cannot see them (may be absent)."""
        ...


@dataclass
class DependencyGraph:
    """Groups a model can be pruned along, the ATen-level graph they came from, and what was rejected."""

    groups: list[Group]
    graph: nx.DiGraph
    rejected: list[tuple[Group, str]] = field(default_factory=list)
    seconds: float = 0.0
    #: parameter shapes at trace time: member positions index these, so surgery checks them first
    param_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: tied parameter name -> the canonical name used in members
    aliases: dict[str, str] = field(default_factory=dict)

    def by_role(self, role: str) -> list[Group]:
        return [g for g in self.groups if g.role == role]

    def find(self, name: str, role: str | None = None) -> Group:
        for g in self.groups:
            if g.name == name and (role is None or g.role == role):
                return g
        raise KeyError(f"no group named {name!r}" + (f" with role {role!r}" if role else ""))

    def __str__(self) -> str:
        lines = [f"{len(self.groups)} prunable groups"]
        lines += [f"  {g}" for g in self.groups]
        return "\n".join(lines)


def trace(
    model: torch.nn.Module,
    example_inputs: torch.Tensor | None = None,
    adapter: GroupLabeler | None = None,
) -> DependencyGraph:
    """Export ``model`` and find every group of channels that must be pruned together.

    ``example_inputs`` is a small LongTensor of token ids (default: 5 tokens). ``adapter`` (a family
    adapter, see :class:`GroupLabeler`) names the groups' roles, rejects groups the model's code cannot
    shrink along, and may declare opaque modules; without one every group is kept, without a role. The
    graph knows no family: :func:`prunekit.trace` looks the adapter up from the model's config.
    """
    import time

    t0 = time.perf_counter()
    exported = export_model(model, example_inputs)
    aliases = graph_aliases(model)
    opaque = adapter.opaque_modules if adapter is not None else {}
    state = propagate(exported, opaque_modules=opaque, aliases=aliases)
    groups, pinned = build_groups(state)
    accepted, rejected = [], [(g, f"pinned: {why}") for g, why in pinned]
    for g in groups:
        g.role = adapter.role(g, model) if adapter is not None else ""
        why = adapter.rejects(g, model) if adapter is not None else None
        if why:
            rejected.append((g, why))
        else:
            accepted.append(g)
    for g in adapter.declared_groups(model) if hasattr(adapter, "declared_groups") else []:
        why = adapter.rejects(g, model)  # stated with their roles by the family (MoE experts)
        (rejected.append((g, why)) if why else accepted.append(g))
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    return DependencyGraph(accepted, state.graph, rejected, time.perf_counter() - t0, shapes, aliases)


def graph_aliases(model: torch.nn.Module) -> dict[str, str]:
    """Tied parameter name -> the first name the same tensor has (the one members use)."""
    seen: dict[int, str] = {}
    out: dict[str, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            out[name] = seen[id(p)]
        else:
            seen[id(p)] = name
    return out
