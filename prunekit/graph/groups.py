"""Prunable groups: sets of parameter slices that must be removed together, and how they print."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Member:
    """One parameter dimension's share of a group.

    ``positions[i]`` (an index along ``dim`` of ``param``) belongs to unit ``units[i]``. In a grouped-head
    group, members such as ``k_proj`` rows exist once per *outer* unit (a KV head) and have
    ``per_outer=True``: their ``units`` index outer units, and they go only when every query head of
    that KV head goes. A member with ``expert=e`` lies in expert ``e``'s slice of a 3-D experts parameter
    (``[experts, out, in]``): ``dim`` is the parameter's, and the slice of every expert must shrink by the
    same count, so the tensor stays rectangular.
    """

    param: str
    dim: int
    positions: torch.Tensor
    units: torch.Tensor
    per_outer: bool = False
    side: str = "param"
    expert: int | None = None

    @property
    def module(self) -> str:
        return self.param.rsplit(".", 1)[0]

    @property
    def attr(self) -> str:
        return self.param.rsplit(".", 1)[1]

    @property
    def consumes(self) -> bool:
        """Whether this member is a consuming layer's inputs: a Linear's columns, or the rows of a weight
        stored ``[in, out]`` (transformers' ``Conv1D``, applied as ``x @ W``)."""
        return self.side == "in" and self.attr == "weight" and self.dim in (0, 1)

    def as_consumer(self, weight: torch.Tensor) -> torch.Tensor:
        """A consuming weight as ``[out, in]``, whichever way it is stored (a view)."""
        return weight.t() if self.dim == 0 else weight

    def describe(self, prefix: str) -> str:
        mod = self.module
        rel = mod[len(prefix) + 1 :] if prefix and mod.startswith(prefix + ".") else _short(mod)
        if mod == prefix:
            rel = ""
        attr = "" if self.attr == "weight" else self.attr
        tag = ".".join(x for x in (rel, attr) if x) or self.attr
        if self.expert is not None:  # the group is named after its expert: the attribute says enough
            rel = ""
            tag = self.attr
        if self.side in ("out", "in") and (self.attr == "weight" or self.expert is not None):
            tag = f"{tag}.{self.side}"
        return f"{tag}[{len(self.positions)}]"


@dataclass
class Group:
    """Channels (or heads) that are removed together across every member parameter.

    ``kind`` is ``"channels"`` (independent channels: MLP, residual stream, Mamba inner channels),
    ``"heads"`` (blocks of channels formed by a reshape: attention heads, Mamba-2 heads, possibly grouped
    with a replication such as GQA) or ``"inner"`` (an axis inside heads, e.g. a head dimension, that
    can only shrink by the same amount in every head) or ``"experts"`` (whole experts of a mixture,
    with their router rows: removing them changes where tokens are routed, which zeros cannot express).
    ``num_units`` counts query heads for head groups; ``num_outer`` counts key/value heads (or Mamba-2
    B/C groups) when heads are grouped. ``min_kept`` units always stay (a router keeps at least its
    top-k experts); groups with the same non-empty ``tie`` must lose the same number of units (the
    channels of the experts of one layer, stored in one tensor). ``unit_groups[i]``, when given, are the
    units of unit ``i`` as a group of their own: an expert is scored by its channels. The units kept
    must be a multiple of ``kept_multiple`` (experts' tensors feed grouped matmul kernels that need
    16-byte rows).
    """

    name: str
    kind: str
    members: list[Member]
    num_units: int
    num_outer: int | None = None
    norm_spanned: tuple[str, ...] = ()
    role: str = ""
    min_kept: int = 1
    tie: str = ""
    kept_multiple: int = 1
    unit_groups: tuple[Group, ...] = ()

    @property
    def units_per_outer(self) -> int:
        return self.num_units // self.num_outer if self.num_outer else 1

    @property
    def block_size(self) -> int:
        """Channels per unit in the thinnest member that has several (a head's ``head_dim``)."""
        ratios = [len(m.positions) // self.num_units for m in self.members if not m.per_outer]
        ratios = [r for r in ratios if r > 1]
        return min(ratios) if ratios else 1

    @property
    def params(self) -> list[str]:
        return [m.param for m in self.members]

    def member(self, param: str, dim: int | None = None) -> Member:
        for m in self.members:
            if m.param == param and (dim is None or m.dim == dim):
                return m
        raise KeyError(f"{param} is not a member of group {self.name}")

    def layer_index(self) -> int | None:
        parts = self.name.split(".")
        for a, b in zip(parts, parts[1:]):
            if a in ("layers", "h", "blocks", "layer") and b.isdigit():
                return int(b)
        return None

    def __str__(self) -> str:
        prefix = self.name
        producers, middles, consumers = [], [], []
        for m in self.members:
            text = m.describe(prefix)
            {"in": consumers, "out": producers}.get(m.side, middles).append(text)
        left = " + ".join(_collapse(producers + middles)) or "-"
        right = " + ".join(_collapse(consumers))
        body = f"{left} → {right}" if right else left
        if self.kind == "experts":
            return f"{_short(prefix)}: {self.num_units} experts: {body}"
        if self.kind == "heads":
            if self.num_outer and self.num_outer != self.num_units:
                head = (
                    f"{self.num_units} heads in {self.num_outer} groups of {self.units_per_outer}"
                    f" × {self.block_size}"
                )
            else:
                head = f"{self.num_units} heads × {self.block_size}"
            return f"{_short(prefix)}: {head}: {body}"
        if not prefix or self.role == "residual":
            return f"{self.role or 'model'} [{self.num_units}]: {body}"
        return f"{_short(prefix)}: {body}"

    __repr__ = __str__


_BASE_PREFIXES = ("model.", "backbone.", "transformer.")


def _collapse(texts: list[str]) -> list[str]:
    """Fold the same member repeated across layers into one entry: ``layers.*.norm[576] ×30``."""
    counts: dict[str, int] = {}
    for text in texts:
        key = re.sub(r"(^|\.)(layers|h|blocks)\.\d+\.", r"\1\2.*.", text)
        counts[key] = counts.get(key, 0) + 1
    return [f"{k} ×{n}" if n > 1 else k for k, n in counts.items()]


def _short(name: str) -> str:
    """Drop the base-model attribute so names read like ``layers.3.mlp``."""
    for p in _BASE_PREFIXES:
        if name.startswith(p):
            return name[len(p) :]
    return name


def common_prefix(names: list[str]) -> str:
    """Longest common dotted module prefix of parameter names."""
    split = [n.split(".")[:-1] for n in names]
    if not split:
        return ""
    out = []
    for parts in zip(*split):
        if all(p == parts[0] for p in parts):
            out.append(parts[0])
        else:
            break
    return ".".join(out)
