"""Which weights (unstructured / N:M) or which groups (structured) a prune call touches.

Patterns are matched against module names (weights) or group names and roles (groups): a plain string
matches a full name or a dotted suffix (``"mlp.down_proj"``), ``"re:<regex>"`` is searched in the name.
Mixture-of-experts matrices are targets per expert (``mlp.experts.3.down_proj``); a pattern may also name
the 3-D parameter they come from (``mlp.experts.down_proj``: that projection of every expert).
A pattern that matches nothing is an error: a typo must not silently prune everything else.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from transformers.pytorch_utils import Conv1D

from ..families.parts.base import is_conv1d
from ..graph.groups import Group
from .experts import ExpertsSplit, UnknownExperts, find_experts

PRUNABLE_MODULES = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Embedding, Conv1D)


def matches(name: str, pattern: str) -> bool:
    if pattern.startswith("re:"):
        return re.search(pattern[3:], name) is not None
    return name == pattern or name.endswith("." + pattern)


def _as_list(patterns, what: str) -> list[str] | None:
    if patterns is None:
        return None
    if isinstance(patterns, str):
        patterns = [patterns]
    patterns = list(patterns)
    for p in patterns:
        if not isinstance(p, str) or not p:
            raise TypeError(f"{what} must be names or 're:' patterns (non-empty strings), got {p!r}")
        if p.startswith("re:"):
            try:
                re.compile(p[3:])
            except re.error as err:
                raise ValueError(f"{what}: invalid regular expression {p!r}: {err}") from err
    return patterns


def _filter(names: Sequence[str], patterns: list[str], what: str, keys=None) -> set[str]:
    keys = keys or {n: (n,) for n in names}
    chosen = set()
    for p in patterns:
        hit = {n for n in names if any(matches(k, p) for k in keys[n])}
        if not hit:
            raise ValueError(f"{what} pattern {p!r} matches nothing")
        chosen |= hit
    return chosen


def weight_targets(
    model: torch.nn.Module,
    layers: Sequence[torch.nn.Module],
    targets=None,
    ignore=None,
    experts: Sequence[ExpertsSplit | UnknownExperts] | None = None,
) -> dict:
    """Module name -> module whose ``weight`` is pruned. Default: every Linear inside the blocks and
    every expert's matrices (per-expert Linears, see :mod:`.experts`; ``experts`` is
    :func:`~.experts.find_experts`'s answer when the caller already has it).

    Raises:
        ValueError: a pattern matches nothing, nothing is left, or a chosen experts module has a layout
            that cannot be split per expert (before anything is written).
    """
    targets, ignore = _as_list(targets, "targets"), _as_list(ignore, "ignore")
    found = {e.name: e for e in (find_experts(model) if experts is None else experts)}
    layer_ids = {id(m) for m in layers}
    candidates: dict[str, torch.nn.Module | UnknownExperts] = {}
    keys: dict[str, tuple[str, ...]] = {}
    layer_prefixes = [name for name, mod in model.named_modules() if id(mod) in layer_ids]
    for name, mod in model.named_modules():
        if isinstance(mod, PRUNABLE_MODULES) and getattr(mod, "weight", None) is not None:
            candidates[name], keys[name] = mod, (name,)
        entry = found.get(name)
        if isinstance(entry, ExpertsSplit):
            for slot, (lin, param) in entry.targets().items():
                candidates[slot], keys[slot] = lin, (slot, param)
        elif entry is not None:  # unknown layout: its parameters stand in, so patterns can leave it out
            for param in entry.params:
                candidates[param], keys[param] = entry, (param,)
    names = list(candidates)
    if targets is None:
        in_layer = {n for n in names if any(n.startswith(p + ".") for p in layer_prefixes)}
        chosen = {
            n
            for n in in_layer
            if isinstance(candidates[n], (torch.nn.Linear, UnknownExperts)) or is_conv1d(candidates[n])
        }
    else:
        chosen = _filter(names, targets, "targets", keys)
    if ignore:
        chosen -= _filter(names, ignore, "ignore", keys)
    for n in names:
        if n in chosen and isinstance(candidates[n], UnknownExperts):
            raise candidates[n].error()
    out, seen = {}, set()
    for n in names:  # model order; tied weights once
        if n in chosen and id(candidates[n].weight) not in seen:
            seen.add(id(candidates[n].weight))
            out[n] = candidates[n]
    if not out:
        raise ValueError("no weights left to prune after applying targets/ignore")
    return out


def weight_candidates(model: torch.nn.Module) -> list[str]:
    """Every name a weight pattern can match: prunable modules, per-expert matrices and 3-D expert
    parameters (recognised or not), so a pattern that names experts is not refused as matching nothing."""
    names = [
        n
        for n, m in model.named_modules()
        if isinstance(m, PRUNABLE_MODULES) and getattr(m, "weight", None) is not None
    ]
    for entry in find_experts(model):
        if isinstance(entry, ExpertsSplit):
            names += [k for slot, (_lin, param) in entry.targets().items() for k in (slot, param)]
        else:
            names += list(entry.params)
    return names


def group_targets(
    groups: Sequence[Group], default_roles: Sequence[str], targets=None, ignore=None
) -> list[Group]:
    """Groups to prune structurally: by role (``"mlp"``, ``"attention"``, ...) or by group name."""
    targets, ignore = _as_list(targets, "targets"), _as_list(ignore, "ignore")
    by_name = {f"{g.name}#{i}": g for i, g in enumerate(groups)}
    keys = {k: (g.name, g.role) for k, g in by_name.items()}
    names = list(by_name)
    if targets is None:
        chosen = {k for k, g in by_name.items() if g.role in default_roles}
    else:
        chosen = _filter(names, targets, "targets", keys)
    if ignore:
        chosen -= _filter(names, ignore, "ignore", keys)
    out = [by_name[k] for k in names if k in chosen]
    if not out:
        raise ValueError("no prunable groups left after applying targets/ignore")
    return out


def check_nm(targeted: dict[str, torch.nn.Module], pattern) -> None:
    """Every targeted row must be a whole number of N:M blocks long."""
    for name, mod in targeted.items():
        cols = mod.weight[0].numel()
        if cols % pattern.m:
            raise ValueError(
                f"N:M {pattern}: {name} has {cols} inputs per row, not a multiple of {pattern.m}"
            )
