"""What structured pruning writes besides the removal: compensated biases and refitted consumer weights.

Both are computed from the consumers' calibration statistics before anything is removed (member positions
refer to the traced shapes), so a plan can be checked whole and written in one go.
"""

from __future__ import annotations

import torch

from ..graph.groups import Group
from ..methods.compensation import COMPENSATIONS
from .surgery import member_positions


def consumers(group: Group) -> list:
    """Members on the consuming side: input columns of the layers that read the group's channels."""
    return [m for m in group.members if m.consumes]


def compensation(model, plan_decision, stats) -> dict[str, torch.Tensor]:
    """Bias deltas W[:, removed] @ mean(x[removed]) for every consumer with statistics."""
    mean_bias = COMPENSATIONS["mean"]
    deltas: dict[str, torch.Tensor] = {}
    for group, units in plan_decision:
        for m in consumers(group):
            if not mean_bias.applies(stats.get(m.module)):
                continue
            pos = member_positions(m, group, units)
            if pos.numel() == 0:
                continue
            delta = mean_bias.bias_delta(m.as_consumer(model.get_parameter(m.param)), stats[m.module], pos)
            deltas[m.module] = deltas.get(m.module, 0) + delta
    return deltas


def refits(model, plan_decision, stats) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Least-squares refit of every consumer with statistics (:mod:`.refit`): new weights by parameter
    name (removed columns zeroed) and the bias deltas that take each bias to its refitted value."""
    solver = COMPENSATIONS["refit"]
    removed: dict[str, list[torch.Tensor]] = {}
    members = {}
    for group, units in plan_decision:
        for m in consumers(group):
            if solver.applies(stats.get(m.module)):
                removed.setdefault(m.module, []).append(member_positions(m, group, units))
                members[m.module] = m
    weights, deltas = {}, {}
    for module, positions in removed.items():
        cut = torch.cat(positions)
        if cut.numel() == 0:
            continue
        layer, m = model.get_submodule(module), members[module]
        new_w, new_b = solver.solve(
            m.as_consumer(layer.weight), getattr(layer, "bias", None), stats[module], cut
        )
        weights[m.param] = m.as_consumer(new_w.to(layer.weight.dtype))
        old_b = getattr(layer, "bias", None)
        deltas[module] = new_b - (0 if old_b is None else old_b.detach().double())
    return weights, deltas


@torch.no_grad()
def write_weights(model, weights: dict[str, torch.Tensor]) -> None:
    for name, value in weights.items():
        model.get_parameter(name).copy_(value)


@torch.no_grad()
def add_biases(model, deltas: dict[str, torch.Tensor]) -> list[str]:
    """Add each delta to its module's bias, creating a zero bias first where there is none."""
    created = []
    for name, delta in deltas.items():
        mod = model.get_submodule(name)
        if getattr(mod, "bias", None) is None:
            mod.bias = torch.nn.Parameter(
                torch.zeros_like(delta, dtype=mod.weight.dtype, device=mod.weight.device)
            )
            created.append(name)
        mod.bias.add_(delta.to(mod.bias.dtype).to(mod.bias.device))
    if created:
        recorded = list(getattr(model.config, "prunekit_added_biases", []) or [])
        model.config.prunekit_added_biases = sorted(set(recorded) | set(created))
    return created
