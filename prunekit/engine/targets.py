"""Which weights (unstructured / N:M) or which groups (structured) a prune call touches.

Patterns are matched against module names (weights) or group names and roles (groups): a plain string
matches a full name or a dotted suffix (``"mlp.down_proj"``), ``"re:<regex>"`` is searched in the name.
A pattern that matches nothing is an error: a typo must not silently prune everything else.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from ..graph.groups import Group

PRUNABLE_MODULES = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Embedding)


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
    model: torch.nn.Module, layers: Sequence[torch.nn.Module], targets=None, ignore=None
) -> dict:
    """Module name -> module whose ``weight`` is pruned. Default: every Linear inside the blocks."""
    targets, ignore = _as_list(targets, "targets"), _as_list(ignore, "ignore")
    layer_ids = {id(m) for m in layers}
    candidates: dict[str, torch.nn.Module] = {}
    in_layer: set[str] = set()
    layer_prefixes = [name for name, mod in model.named_modules() if id(mod) in layer_ids]
    for name, mod in model.named_modules():
        if isinstance(mod, PRUNABLE_MODULES) and getattr(mod, "weight", None) is not None:
            candidates[name] = mod
            if any(name.startswith(p + ".") for p in layer_prefixes):
                in_layer.add(name)
    names = list(candidates)
    if targets is None:
        chosen = {n for n in in_layer if isinstance(candidates[n], torch.nn.Linear)}
    else:
        chosen = _filter(names, targets, "targets")
    if ignore:
        chosen -= _filter(names, ignore, "ignore")
    out, seen = {}, set()
    for n in names:  # model order; tied weights once
        if n in chosen and id(candidates[n].weight) not in seen:
            seen.add(id(candidates[n].weight))
            out[n] = candidates[n]
    if not out:
        raise ValueError("no weights left to prune after applying targets/ignore")
    return out


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
