"""How each ATen op moves channel labels from its inputs to its outputs.

A handler receives the :class:`OpContext` (the node, its input labels, the label algebra) and returns the
labels of the node's output: a list with one entry per dimension, or a tuple of such lists for ops with
several outputs. Handlers are registered by op name (``"aten.linear"``) in :data:`HANDLERS`; an op without a
handler is accepted only while none of its inputs carries channel labels, because then it cannot matter for
pruning (mask building, position ids). Otherwise the tracer raises :class:`UnmappedOpError`.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .labels import WILD, LabelAlgebra

Label = Any  # None | WILD | torch.Tensor
Labels = list  # list[Label], one per dim

HANDLERS: dict[str, Callable[[OpContext], Any]] = {}


class UnmappedOpError(RuntimeError):
    """An op the tracer has no rule for touches a prunable dimension."""


@dataclass
class OpContext:
    node: Any
    module: str
    algebra: LabelAlgebra
    labels_of: Callable[[Any], Any]
    spans: list = field(default_factory=list)

    @property
    def uf(self):
        return self.algebra.uf

    def arg(self, i: int, default=None):
        args = self.node.args
        if i < len(args):
            return args[i]
        return default

    def kwarg(self, name: str, pos: int, default=None):
        if name in self.node.kwargs:
            return self.node.kwargs[name]
        return self.arg(pos, default)

    def shape(self, x=None) -> tuple[int, ...]:
        val = (x if x is not None else self.node).meta.get("val")
        return tuple(int(s) for s in val.shape)

    def out_shape(self) -> tuple[int, ...]:
        return self.shape(self.node)

    def where(self) -> str:
        return f"{self.node.target} in module '{self.module or '<root>'}'"


def register(*names: str):
    def deco(fn):
        for n in names:
            HANDLERS[n] = fn
        return fn

    return deco


def op_name(target) -> str:
    """``aten.linear.default`` -> ``aten.linear``; ``operator.getitem`` -> ``getitem``."""
    if target is operator.getitem:
        return "getitem"
    name = str(target)
    m = re.match(r"^(\w+)\.(\w+)(\.\w+)?$", name)
    if m:
        return f"{m.group(1)}.{m.group(2)}"
    return name


def is_labeled(x: Label) -> bool:
    return isinstance(x, torch.Tensor)


def is_tensor_node(x) -> bool:
    return hasattr(x, "meta") and isinstance(x.meta.get("val"), torch.Tensor)


# ---------------------------------------------------------------------------- combining labels
def combine(ctx: OpContext, entries: list[tuple[Label, int]], what: str) -> Label:
    """Labels that must coincide on one axis: unify the labelled ones; a constant axis pins them.

    ``entries`` are (label, size) pairs of every operand on this axis; size-1 (broadcast) entries are
    ignored. A labelled axis that meets an unlabelled, non-broadcast constant axis (e.g. rotary ``cos``
    along the head dimension) cannot shrink, so its channels are pinned.
    """
    labeled = [lab for lab, size in entries if is_labeled(lab) and size > 1]
    if not labeled:
        return WILD if any(lab is WILD and size > 1 for lab, size in entries) else None
    first = labeled[0]
    for other in labeled[1:]:
        ctx.uf.unify(first, other)
    if any(lab is None and size > 1 for lab, size in entries):
        ctx.uf.pin(first, f"meets a constant axis in {ctx.where()} ({what})")
    return first


def tensor_inputs(ctx: OpContext, args) -> list:
    return [a for a in args if is_tensor_node(a)]


def broadcast(ctx: OpContext, inputs: list, out_shape: tuple[int, ...]) -> Labels:
    """Elementwise op with numpy broadcasting: align dims from the right and combine per axis."""
    rank = len(out_shape)
    out: Labels = []
    for d in range(rank):
        entries = []
        for x in inputs:
            shp = ctx.shape(x)
            k = d - (rank - len(shp))
            if k < 0:
                continue
            entries.append((ctx.labels_of(x)[k], shp[k]))
        out.append(combine(ctx, entries, f"axis {d}"))
    return out


def pin_all(ctx: OpContext, labels: Labels, reason: str) -> None:
    for lab in labels:
        if is_labeled(lab):
            ctx.uf.pin(lab, f"{reason} in {ctx.where()}")


def norm_dim(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


def record_span(ctx: OpContext, label: Label) -> None:
    """A reduction over a labelled axis (a norm's mean of squares): its output depends on all channels."""
    if is_labeled(label):
        ctx.spans.append((label, ctx.module, str(ctx.node.target)))
