"""Apply a structured decision to a model: zero the chosen units (soft) or cut them out (hard).

A decision is a list of ``(group, units)`` pairs: ``units`` index the group's units (channels, or query
heads for head groups). Hard removal takes all pairs at once because several groups may share one
parameter dimension (Mamba-2's ``in_proj`` rows hold both head and state segments): positions always
refer to the shapes the model had when it was traced, so cutting group by group would shift them.

Everything is validated before the first tensor changes, so a bad decision leaves the model untouched.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import torch

from ..families import get_adapter
from ..graph.groups import Group, Member

Decision = Sequence[tuple[Group, Iterable[int] | torch.Tensor]]


class SurgeryError(ValueError):
    """A removal that the model cannot take (bad indices, uneven heads, stale trace)."""


def _as_units(group: Group, units) -> torch.Tensor:
    t = torch.as_tensor(list(units) if not isinstance(units, torch.Tensor) else units, dtype=torch.long)
    t = t.flatten()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= group.num_units):
        raise SurgeryError(f"unit indices must lie in [0, {group.num_units}) for group {group.name!r}")
    if torch.unique(t).numel() != t.numel():
        raise SurgeryError(f"duplicate unit indices for group {group.name!r}")
    return torch.sort(t).values


def dropped_outer(group: Group, units: torch.Tensor) -> torch.Tensor:
    """Outer units (KV heads, B/C groups) all of whose query units are in ``units``."""
    if not group.num_outer:
        return units.new_empty(0)
    per = group.units_per_outer
    counts = torch.bincount(units // per, minlength=group.num_outer)
    return torch.nonzero(counts == per).flatten()


def check_units(group: Group, units, uneven: bool = True) -> torch.Tensor:
    """Validate a set of units to drop from one group; returns them sorted as a LongTensor.

    Every group keeps at least one unit. In a grouped-head group the surviving KV groups (or B/C
    groups) may keep different numbers of query heads only where the family can run that (``uneven``,
    see :meth:`~prunekit.families.base.Adapter.runs_uneven_groups`); otherwise each keeps the same number.
    """
    t = _as_units(group, units)
    if t.numel() > group.num_units - max(1, group.min_kept):
        keep = "keep at least one" if group.min_kept <= 1 else f"keep at least {group.min_kept}"
        raise SurgeryError(
            f"cannot remove {t.numel()} of the {group.num_units} units of group {group.name!r}: {keep}"
        )
    kept = group.num_units - t.numel()
    if group.kept_multiple > 1 and kept % group.kept_multiple:
        raise SurgeryError(
            f"group {group.name!r} would keep {kept} units: it must keep a multiple of {group.kept_multiple}"
        )
    if group.num_outer and not uneven:
        per = group.units_per_outer
        counts = torch.bincount(t // per, minlength=group.num_outer)
        kept = per - counts
        surviving = kept[kept > 0]
        if surviving.numel() and bool((surviving != surviving[0]).any()):
            raise SurgeryError(
                f"group {group.name!r}: this family needs every remaining KV group to keep the same number "
                f"of query heads, got {kept.tolist()} kept per group; drop whole groups or an equal count "
                "from each"
            )
    return t


def member_positions(member: Member, group: Group, units: torch.Tensor) -> torch.Tensor:
    """Positions along ``member.dim`` that go when ``units`` of ``group`` go."""
    chosen = dropped_outer(group, units) if member.per_outer else units
    if chosen.numel() == 0:
        return chosen
    return member.positions[torch.isin(member.units, chosen)]


def _check_fresh(model: torch.nn.Module, group: Group, shapes: dict[str, tuple[int, ...]] | None) -> None:
    for m in group.members:
        try:
            p = model.get_parameter(m.param)
        except AttributeError as err:
            raise SurgeryError(
                f"group {group.name!r} names {m.param}, which the model does not have"
            ) from err
        expected = shapes.get(m.param) if shapes else None
        if expected is not None and tuple(p.shape) != tuple(expected):
            raise SurgeryError(
                f"{m.param} has shape {tuple(p.shape)} but was traced as {tuple(expected)}: "
                "the model changed since it was traced; trace it again"
            )
        if m.dim >= p.dim() or (len(m.positions) and int(m.positions.max()) >= p.shape[m.dim]):
            raise SurgeryError(f"group {group.name!r} does not fit {m.param} of shape {tuple(p.shape)}")


def _validated(model, decision: Decision, shapes, adapter=None) -> list[tuple[Group, torch.Tensor]]:
    """Every pair checked against the model; ``adapter`` given: shapes the family's code can run."""
    out, seen = [], set()
    for group, units in decision:
        if id(group) in seen:
            raise SurgeryError(f"group {group.name!r} appears twice in one decision")
        seen.add(id(group))
        _check_fresh(model, group, shapes)
        uneven = adapter is None or adapter.runs_uneven_groups(model, group)
        out.append((group, check_units(group, units, uneven=uneven)))
    _check_expert_counts(model, out)
    return out


def _check_expert_counts(model, checked: list[tuple[Group, torch.Tensor]]) -> None:
    """Every expert of a 3-D parameter must lose as many positions along a dimension as the others:
    the experts share one tensor, which must stay rectangular."""
    counts: dict[tuple[str, int], dict[int, int]] = defaultdict(dict)
    for group, units in checked:
        for m in group.members:
            if m.expert is not None:
                per = counts[(m.param, m.dim)]
                per[m.expert] = per.get(m.expert, 0) + int(member_positions(m, group, units).numel())
    for (param, dim), per in counts.items():
        experts = model.get_parameter(param).shape[0]
        got = [per.get(e, 0) for e in range(experts)]
        if len(set(got)) > 1:
            raise SurgeryError(
                f"{param}: its {experts} experts would lose {got} positions along dim {dim}; the experts "
                "of one tensor must lose the same number (prune the same count from every expert)"
            )


def validate(model, decision: Decision, shapes=None, adapter=None) -> list[tuple[Group, torch.Tensor]]:
    """Check a decision without writing anything (what :func:`remove` would refuse, it refuses)."""
    return _validated(model, decision, shapes, adapter)


@torch.no_grad()
def soft_zero(model: torch.nn.Module, decision: Decision, shapes: dict | None = None) -> None:
    """Zero every member slice of the chosen units; shapes and module attributes stay as they are."""
    for group, units in _validated(model, decision, shapes):
        for m in group.members:
            pos = member_positions(m, group, units)
            if pos.numel():
                p = model.get_parameter(m.param)
                if m.expert is None:
                    p.index_fill_(m.dim, pos, 0.0)
                else:
                    p[m.expert].index_fill_(m.dim - 1, pos.to(p.device), 0.0)


def _cut_experts(data: torch.Tensor, dim: int, per: dict[int, list[torch.Tensor]]) -> torch.Tensor:
    """Each expert's slice of a 3-D parameter without its own positions along ``dim`` (equal counts)."""
    slices = []
    for e in range(data.shape[0]):
        keep = torch.ones(data.shape[dim], dtype=torch.bool)
        if per.get(e):
            keep[torch.cat(per[e])] = False
        slices.append(data[e].index_select(dim - 1, torch.nonzero(keep).flatten().to(data.device)))
    return torch.stack(slices)


def _owners(model: torch.nn.Module) -> dict[int, list[tuple[torch.nn.Module, str]]]:
    """Parameter object id -> every (module, attribute) that holds it (tied weights have several)."""
    owners: dict[int, list] = defaultdict(list)
    for mod in model.modules():
        for attr, p in mod._parameters.items():
            if p is not None:
                owners[id(p)].append((mod, attr))
    return owners


@torch.no_grad()
def remove(model: torch.nn.Module, decision: Decision, adapter=None, shapes: dict | None = None) -> dict:
    """Physically remove the chosen units of every group, then let the adapter restate sizes.

    Returns ``{param: (shape_before, shape_after)}`` for every parameter that shrank. ``shapes`` are the
    parameter shapes at trace time (``DependencyGraph.param_shapes``); when given, a model that changed
    since the trace is refused instead of being cut at the wrong places.
    """
    adapter = adapter or get_adapter(model)
    checked = _validated(model, decision, shapes, adapter)
    drops: dict[tuple[str, int], list[torch.Tensor]] = defaultdict(list)
    per_expert: dict[tuple[str, int], dict[int, list[torch.Tensor]]] = defaultdict(lambda: defaultdict(list))
    for group, units in checked:
        for m in group.members:
            pos = member_positions(m, group, units)
            if pos.numel() and m.expert is None:
                drops[(m.param, m.dim)].append(pos)
            elif pos.numel():
                per_expert[(m.param, m.dim)][m.expert].append(pos)
    if not drops and not per_expert:
        return {}

    adapter.before_hidden_change(model)
    owners = _owners(model)
    changed: dict[str, tuple] = {}
    by_param: dict[str, list[tuple[int, torch.Tensor]]] = defaultdict(list)
    expert_cuts: dict[str, list[tuple[int, dict]]] = defaultdict(list)
    for (param, dim), per in per_expert.items():
        expert_cuts[param].append((dim, per))
    for (param, dim), pos_list in drops.items():
        by_param[param].append((dim, torch.unique(torch.cat(pos_list))))
    for param in dict.fromkeys([*expert_cuts, *by_param]):
        old = model.get_parameter(param)
        new = old.data
        for dim, per in expert_cuts.get(param, []):  # inside every expert first: indices are the traced ones
            new = _cut_experts(new, dim, per)
        for dim, pos in by_param.get(param, []):
            keep = torch.ones(new.shape[dim], dtype=torch.bool)
            keep[pos] = False
            new = new.index_select(dim, torch.nonzero(keep).flatten().to(new.device))
        replacement = torch.nn.Parameter(new.contiguous(), requires_grad=old.requires_grad)
        for mod, attr in owners[id(old)]:
            mod._parameters[attr] = replacement
        changed[param] = (tuple(old.shape), tuple(new.shape))

    for group, units in checked:
        if units.numel():
            adapter.on_removed(model, group, units)
    adapter.sync(model)
    return changed
