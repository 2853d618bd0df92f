"""Turn propagated labels into groups.

Every parameter position resolves, through the factorization records, to a tuple of *leaf* classes (for a
query row: its key/value head, its query head within that group, its channel within the head). Leaf
classes with the same *signature* (the set of ``(parameter, dim, slot)`` they occur at) form a family; a
family is one prunable group, except that a replication axis (GQA's repeated query heads, Mamba-2's heads
sharing a B/C group) is fused with the axis it replicates into one grouped-head group.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from .groups import Group, Member, common_prefix
from .labels import LabelAlgebra
from .ops import is_labeled
from .tracer import TraceState


class _Resolver:
    """Maps an id to its leaf coordinates, using the finest factorization of its class."""

    def __init__(self, algebra: LabelAlgebra) -> None:
        self.uf = algebra.uf
        self.where: dict[int, tuple[int, object]] = {}
        for rec in algebra.records:
            for j, x in enumerate(rec.whole.tolist()):
                r = self.uf.find(x)
                prev = self.where.get(r)
                if prev is None or len(prev[1].axes) < len(rec.axes):
                    self.where[r] = (j, rec)
        self.cache: dict[int, tuple[int, ...]] = {}

    def leaves(self, x: int, depth: int = 0) -> tuple[int, ...]:
        r = self.uf.find(x)
        hit = self.cache.get(r)
        if hit is not None:
            return hit
        if r not in self.where or depth > 16:
            out: tuple[int, ...] = (r,)
        else:
            j, rec = self.where[r]
            coords = []
            for size in reversed(rec.sizes):
                coords.append(j % size)
                j //= size
            coords.reverse()
            out = ()
            for axis, c in zip(rec.axes, coords):
                out += self.leaves(int(axis[c]), depth + 1)
        self.cache[r] = out
        return out


def build_groups(state: TraceState) -> tuple[list[Group], list]:
    """Form groups from a trace. Returns (groups, pinned) where pinned lists (group, reason)."""
    algebra = state.algebra
    algebra.close()
    uf = algebra.uf
    res = _Resolver(algebra)

    # leaf class -> signature entries; (param, dim) -> per position leaf tuples
    signature: dict[int, set] = defaultdict(set)
    first_seen: dict[int, tuple[int, int]] = {}
    pos_leaves: dict[tuple[str, int], list[tuple[int, ...]]] = {}
    order = 0
    for fqn, labs in state.param_labels.items():
        for dim, lab in enumerate(labs):
            if not is_labeled(lab):
                continue
            tuples = [res.leaves(x) for x in lab.tolist()]
            pos_leaves[(fqn, dim)] = tuples
            for p, tup in enumerate(tuples):
                for slot, leaf in enumerate(tup):
                    signature[leaf].add((fqn, dim, slot, len(tup)))
                    if leaf not in first_seen:
                        first_seen[leaf] = (order, p)
            order += 1

    families: dict[frozenset, list[int]] = defaultdict(list)
    for leaf, sig in signature.items():
        families[frozenset(sig)].append(leaf)
    family_of: dict[int, frozenset] = {}
    for sig, leaves in families.items():
        leaves.sort(key=lambda lf: first_seen[lf])
        for lf in leaves:
            family_of[lf] = sig

    # replication axes: a merge record whose axis i was born as a replica has outer axis i-1
    replica_outer: dict[frozenset, frozenset] = {}
    for rec in algebra.records:
        for i in range(1, len(rec.axes)):
            ax = rec.axes[i]
            if int(ax[0]) in uf.replica_born:
                inner = family_of.get(res.leaves(int(ax[0]))[0])
                outer_leaf = res.leaves(int(rec.axes[i - 1][0]))
                outer = family_of.get(outer_leaf[-1]) if outer_leaf else None
                if inner is not None and outer is not None and inner != outer:
                    replica_outer[inner] = outer

    spanned: dict[frozenset, set[str]] = defaultdict(set)
    for lab, module, _op in state.spans:
        for x in lab.tolist():
            for leaf in res.leaves(x):
                fam = family_of.get(leaf)
                if fam is not None:
                    spanned[fam].add(module)

    groups, pinned = [], []
    consumed_inner = set(replica_outer)
    for sig, leaves in families.items():
        if sig in consumed_inner:
            continue
        inner_sig = next((i for i, o in replica_outer.items() if o == sig), None)
        group = _make_group(sig, leaves, inner_sig, families, pos_leaves, state, spanned)
        if group is None:
            continue
        reasons = {uf.pinned[uf.find(lf)] for lf in leaves if uf.is_pinned(lf)}
        if inner_sig is not None:
            reasons |= {uf.pinned[uf.find(lf)] for lf in families[inner_sig] if uf.is_pinned(lf)}
        if reasons:
            pinned.append((group, sorted(reasons)[0]))
        else:
            groups.append(group)
    groups.sort(key=_sort_key)
    return groups, pinned


def _make_group(sig, leaves, inner_sig, families, pos_leaves, state, spanned) -> Group | None:
    unit_of = {lf: i for i, lf in enumerate(leaves)}
    inner_leaves = families[inner_sig] if inner_sig is not None else []
    inner_of = {lf: i for i, lf in enumerate(inner_leaves)}
    n_inner = max(1, len(inner_leaves))
    members: list[Member] = []
    any_multi_slot_outer = False
    touched = {(f, d) for (f, d, _s, _n) in sig}
    if inner_sig is not None:
        touched |= {(f, d) for (f, d, _s, _n) in inner_sig}
    for (fqn, dim), tuples in pos_leaves.items():
        if (fqn, dim) not in touched:
            continue
        per_unit: tuple[list, list] = ([], [])
        per_outer: tuple[list, list] = ([], [])
        for p, tup in enumerate(tuples):
            hit = [s for s, leaf in enumerate(tup) if leaf in unit_of]
            if not hit:
                continue
            s = hit[0]
            if s == 0 and len(tup) > 1:
                any_multi_slot_outer = True
            unit = unit_of[tup[s]]
            inner = next((inner_of[leaf] for leaf in tup[s + 1 :] if leaf in inner_of), None)
            if inner_leaves and inner is None:
                per_outer[0].append(p)
                per_outer[1].append(unit)
            else:
                per_unit[0].append(p)
                per_unit[1].append(unit * n_inner + inner if inner is not None else unit)
        side = state.sides.get((fqn, dim), "param")
        for (pos, units), outer in ((per_unit, False), (per_outer, True)):
            if pos:
                members.append(
                    Member(fqn, dim, torch.tensor(pos), torch.tensor(units), per_outer=outer, side=side)
                )
    if not members:
        return None
    slots = {s for (_f, _d, s, _n) in sig}
    if inner_leaves or any_multi_slot_outer:
        kind = "heads"
    elif slots == {0} and all(n == 1 for (_f, _d, _s, n) in sig):
        kind = "channels"
    else:
        kind = "inner"
    name = common_prefix([m.param for m in members])
    norm = set(spanned.get(sig, set())) | (set(spanned.get(inner_sig, set())) if inner_sig else set())
    num_units = len(leaves) * n_inner
    return Group(
        name=name,
        kind=kind,
        members=members,
        num_units=num_units,
        num_outer=len(leaves) if inner_leaves else None,
        norm_spanned=tuple(sorted(norm)),
    )


def _sort_key(g: Group):
    layer = g.layer_index()
    return (layer if layer is not None else -1, g.name, g.kind)
