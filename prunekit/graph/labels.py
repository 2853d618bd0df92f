"""Channel labels: the algebra the tracer uses to decide which channels must be removed together.

Every dimension of every tensor in the exported graph carries a *label*: either ``None`` (a dimension that
no pruning can change: batch, sequence, a constant buffer's axis), ``WILD`` (an axis of a freshly created
tensor such as ``zeros(...)`` whose size follows the model's configuration and therefore adapts to
whatever it meets), or a vector of integer *channel ids* with one id per position.

Ids live in a union-find. Two positions that must disappear together (the same MLP channel seen in
``gate_proj``'s output, ``up_proj``'s output and ``down_proj``'s input) end up in one class.

Reshapes need more than a union-find: viewing 576 query channels as ``9 heads x 64`` does not merge any
channels, it says that the flat space *is the product* of a head axis and a head-dim axis. Such facts are
kept as :class:`Factorization` records (``whole == outer x inner`` in row-major order). Merging axes back
(``[..., 9, 64] -> [..., 576]``) looks the record up and returns the original flat ids, so attention's
output lands on the same space that ``o_proj`` reads. Axes that come from replication (GQA's
``repeat_kv``, Mamba-2's ``repeat_interleave`` of B/C groups) are created as *replica* axes: they carry no
parameter of their own, and a head group built on them is one whose query heads share a key/value head.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

WILD = "wild"
"""Label of an axis whose size comes from configuration (``zeros(b, d_inner, n)``): it adopts any label."""


class UnionFind:
    """Union-find over integer ids with a *pinned* flag and the reasons for it, merged on union."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.pinned: dict[int, str] = {}
        self.replica: set[int] = set()
        self.replica_born: set[int] = set()

    def fresh(self, n: int, replica: bool = False) -> torch.Tensor:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        if replica:
            self.replica.update(range(start, start + n))
            self.replica_born.update(range(start, start + n))
        return torch.arange(start, start + n, dtype=torch.long)

    def find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if ra > rb:  # keep the oldest id as representative: parameters are allocated first
            ra, rb = rb, ra
        self.parent[rb] = ra
        if rb in self.pinned and ra not in self.pinned:
            self.pinned[ra] = self.pinned[rb]
        if (ra in self.replica) != (rb in self.replica):
            self.replica.discard(ra)  # a replica axis unified with a real one is real
        return ra

    def unify(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Unify two label vectors position by position."""
        if a.shape != b.shape:
            raise ValueError(f"cannot unify labels of sizes {tuple(a.shape)} and {tuple(b.shape)}")
        if a is b:
            return
        for x, y in zip(a.tolist(), b.tolist()):
            if x != y:
                self.union(x, y)

    def pin(self, labels: torch.Tensor, reason: str) -> None:
        for x in labels.tolist():
            r = self.find(x)
            self.pinned.setdefault(r, reason)

    def is_pinned(self, i: int) -> bool:
        return self.find(i) in self.pinned

    def reps(self, labels: torch.Tensor) -> tuple[int, ...]:
        return tuple(self.find(x) for x in labels.tolist())

    def is_replica(self, i: int) -> bool:
        return self.find(i) in self.replica


@dataclass
class Factorization:
    """``whole`` (flat ids) equals the row-major product of ``axes`` (one id vector per axis)."""

    whole: torch.Tensor
    axes: list[torch.Tensor]
    origin: str = ""

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(len(a) for a in self.axes)


@dataclass
class LabelAlgebra:
    """Union-find plus factorization records, with the split/merge operations reshapes need."""

    uf: UnionFind = field(default_factory=UnionFind)
    records: list[Factorization] = field(default_factory=list)

    def _same(self, a: torch.Tensor, b: torch.Tensor) -> bool:
        if len(a) != len(b):
            return False
        find = self.uf.find
        if find(int(a[0])) != find(int(b[0])) or find(int(a[-1])) != find(int(b[-1])):
            return False
        return self.uf.reps(a) == self.uf.reps(b)

    def split(self, whole: torch.Tensor, sizes: list[int], origin: str) -> list[torch.Tensor]:
        """Labels for ``whole`` viewed as ``sizes`` (row-major); reuses a known factorization."""
        for rec in self.records:
            if rec.sizes == tuple(sizes) and self._same(rec.whole, whole):
                return rec.axes
        axes = [self.uf.fresh(s) for s in sizes]
        self.records.append(Factorization(whole, axes, origin))
        return axes

    def merge(self, axes: list, sizes: list[int], origin: str) -> torch.Tensor | None:
        """Labels of the flat dim obtained by merging ``axes`` (free axes become replica axes)."""
        if all(not isinstance(a, torch.Tensor) for a in axes):
            return None
        real = [a if isinstance(a, torch.Tensor) else None for a in axes]
        for rec in self.records:
            if rec.sizes == tuple(sizes) and all(
                a is None and self.uf.is_replica(int(r[0])) or a is not None and self._same(r, a)
                for r, a in zip(rec.axes, real)
            ):
                return rec.whole
        filled = [a if a is not None else self.uf.fresh(s, replica=True) for a, s in zip(real, sizes)]
        n = 1
        for s in sizes:
            n *= s
        whole = self.uf.fresh(n)
        self.records.append(Factorization(whole, filled, origin))
        return whole

    # ------------------------------------------------------------------ closure
    def close(self) -> None:
        """Make the records consistent: equal wholes with equal sizes share axes; unequal sizes refine.

        Runs to a fixpoint. Two records over the same flat space with sizes (4, 8) and (2, 16) are
        refined to (2, 2, 8): the head axis of 4 becomes ``2 x 2`` and the 16 becomes ``2 x 8``.
        """
        changed = True
        while changed:
            changed = False
            by_whole: dict[tuple[int, ...], list[Factorization]] = {}
            for rec in self.records:
                by_whole.setdefault(self.uf.reps(rec.whole), []).append(rec)
            for recs in by_whole.values():
                first = recs[0]
                for other in recs[1:]:
                    if other.sizes == first.sizes:
                        for a, b in zip(first.axes, other.axes):
                            if self.uf.reps(a) != self.uf.reps(b):
                                self.uf.unify(a, b)
                                changed = True
                    elif self._refine(first, other):
                        changed = True

    def _refine(self, r1: Factorization, r2: Factorization) -> bool:
        """Introduce a common refinement of two factorizations of one space; False if none exists."""
        b1 = _breakpoints(r1.sizes)
        b2 = _breakpoints(r2.sizes)
        points = sorted(set(b1) | set(b2))
        n = len(r1.whole)
        # every breakpoint (suffix product) must divide the next larger one
        chain = [1, *points, n] if points and points[-1] != n else [1, *points]
        chain = sorted(set(chain))
        if any(chain[i + 1] % chain[i] for i in range(len(chain) - 1)):
            return False
        fine_sizes = [chain[i + 1] // chain[i] for i in range(len(chain) - 1)][::-1]
        key = tuple(fine_sizes)
        if key == r1.sizes or key == r2.sizes:
            return False
        fine_axes = self.split(r1.whole, list(fine_sizes), origin="refinement")
        changed = False
        for rec in (r1, r2):
            pos = 0
            for axis, size in zip(rec.axes, rec.sizes):
                run, prod = [], 1
                while prod < size:
                    run.append(pos)
                    prod *= fine_sizes[pos]
                    pos += 1
                if len(run) == 1:
                    if self.uf.reps(axis) != self.uf.reps(fine_axes[run[0]]):
                        self.uf.unify(axis, fine_axes[run[0]])
                        changed = True
                else:
                    sub = [fine_axes[i] for i in run]
                    sizes = tuple(len(s) for s in sub)
                    known = next(
                        (r for r in self.records if r.sizes == sizes and self._same(r.whole, axis)), None
                    )
                    if known is None:
                        self.records.append(Factorization(axis, sub, "refinement"))
                        changed = True
                    else:
                        for a, b in zip(known.axes, sub):
                            if self.uf.reps(a) != self.uf.reps(b):
                                self.uf.unify(a, b)
                                changed = True
        return changed


def _breakpoints(sizes: tuple[int, ...]) -> list[int]:
    """Suffix products (strides) of a row-major factorization, excluding 1."""
    out, prod = [], 1
    for s in reversed(sizes[1:]):
        prod *= s
        out.append(prod)
    return out
