"""The public tracing entry point: model -> :class:`DependencyGraph`."""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import torch

from .build import build_groups
from .groups import Group
from .tracer import export_model, propagate


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
    model: torch.nn.Module, example_inputs: torch.Tensor | None = None, adapter=None
) -> DependencyGraph:
    """Export ``model`` and find every group of channels that must be pruned together.

    ``example_inputs`` is a small LongTensor of token ids (default: 5 tokens). The adapter (looked up
    from the model's config when not given) names the groups' roles, rejects groups the model's code
    cannot shrink along, and may declare opaque modules.
    """
    import time

    from ..adapters import get_adapter

    t0 = time.perf_counter()
    adapter = adapter or get_adapter(model)
    exported = export_model(model, example_inputs)
    aliases = _aliases(model)
    state = propagate(exported, opaque_modules=adapter.opaque_modules, aliases=aliases)
    groups, pinned = build_groups(state)
    accepted, rejected = [], [(g, f"pinned: {why}") for g, why in pinned]
    for g in groups:
        g.role = adapter.role(g, model)
        why = adapter.rejects(g, model)
        if why:
            rejected.append((g, why))
        else:
            accepted.append(g)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    return DependencyGraph(accepted, state.graph, rejected, time.perf_counter() - t0, shapes, aliases)


def _aliases(model: torch.nn.Module) -> dict[str, str]:
    seen: dict[int, str] = {}
    out: dict[str, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            out[name] = seen[id(p)]
        else:
            seen[id(p)] = name
    return out
