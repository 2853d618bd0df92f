"""Label rules for ops that only move data: views, permutations, slicing, concatenation, padding."""

from __future__ import annotations

from .labels import WILD
from .ops import (
    OpContext,
    broadcast,
    combine,
    is_labeled,
    is_tensor_node,
    norm_dim,
    pin_all,
    register,
    tensor_inputs,
)

_PASS_THROUGH = (
    "aten.alias",
    "aten.clone",
    "aten.contiguous",
    "aten.detach",
    "aten.to",
    "aten._to_copy",
    "aten.lift_fresh_copy",
    "aten.dropout",
    "aten.type_as",
    "aten.zeros_like",
    "aten.ones_like",
    "aten.empty_like",
    "aten.full_like",
    "aten.native_dropout",
    "aten.view_as",
    "aten.clamp_min",
    "aten.feature_dropout",
    "aten.alpha_dropout",
)


@register(*_PASS_THROUGH)
def _pass_through(ctx: OpContext):
    src = ctx.arg(0)
    labels = list(ctx.labels_of(src))
    if str(ctx.node.target).startswith("aten.native_dropout"):
        return (labels, labels)
    return labels


def _reshape_groups(old: tuple[int, ...], new: tuple[int, ...]):
    """Pair up runs of old and new dims with equal products (row-major reshape is unique this way).

    Size-1 dims are left out of every run: they never carry labels.
    """
    oi = [i for i, s in enumerate(old) if s != 1]
    ni = [j for j, s in enumerate(new) if s != 1]
    groups, a, b = [], 0, 0
    while a < len(oi) and b < len(ni):
        ga, gb = [oi[a]], [ni[b]]
        po, pn = old[oi[a]], new[ni[b]]
        while po != pn:
            if po < pn:
                a += 1
                ga.append(oi[a])
                po *= old[oi[a]]
            else:
                b += 1
                gb.append(ni[b])
                pn *= new[ni[b]]
        groups.append((ga, gb))
        a += 1
        b += 1
    return groups


def reshape_labels(ctx: OpContext, labels, old: tuple[int, ...], new: tuple[int, ...]):
    out: list = [None] * len(new)
    for ga, gb in _reshape_groups(old, new):
        src = [labels[i] for i in ga]
        if len(ga) == 1 and len(gb) == 1:
            out[gb[0]] = src[0]
            continue
        if not any(is_labeled(x) for x in src):
            fill = WILD if any(x is WILD for x in src) else None
            for j in gb:
                out[j] = fill
            continue
        if len(ga) == 1:
            flat = src[0]
        else:
            flat = ctx.algebra.merge(src, [old[i] for i in ga], origin=ctx.where())
        if len(gb) == 1:
            out[gb[0]] = flat
        else:
            axes = ctx.algebra.split(flat, [new[j] for j in gb], origin=ctx.where())
            for j, ax in zip(gb, axes):
                out[j] = ax
    return out


@register("aten.view", "aten.reshape", "aten._unsafe_view", "aten.flatten", "aten.unflatten")
def _reshape(ctx: OpContext):
    src = ctx.arg(0)
    return reshape_labels(ctx, ctx.labels_of(src), ctx.shape(src), ctx.out_shape())


@register("aten.transpose", "aten.swapaxes")
def _transpose(ctx: OpContext):
    labels = list(ctx.labels_of(ctx.arg(0)))
    rank = len(labels)
    d0, d1 = norm_dim(ctx.arg(1), rank), norm_dim(ctx.arg(2), rank)
    labels[d0], labels[d1] = labels[d1], labels[d0]
    return labels


@register("aten.t", "aten.numpy_T")  # ``weight.T`` (Falcon's linear): every axis reversed
def _t(ctx: OpContext):
    return list(reversed(ctx.labels_of(ctx.arg(0))))


@register("aten.permute")
def _permute(ctx: OpContext):
    labels = ctx.labels_of(ctx.arg(0))
    rank = len(labels)
    return [labels[norm_dim(d, rank)] for d in ctx.arg(1)]


@register("aten.unsqueeze")
def _unsqueeze(ctx: OpContext):
    labels = list(ctx.labels_of(ctx.arg(0)))
    labels.insert(norm_dim(ctx.arg(1), len(labels) + 1), None)
    return labels


@register("aten.squeeze")
def _squeeze(ctx: OpContext):
    src = ctx.arg(0)
    labels, shape = ctx.labels_of(src), ctx.shape(src)
    dims = ctx.arg(1)
    if dims is None:
        dims = [i for i, s in enumerate(shape) if s == 1]
    elif isinstance(dims, int):
        dims = [dims]
    drop = {norm_dim(d, len(shape)) for d in dims if shape[norm_dim(d, len(shape))] == 1}
    return [lab for i, lab in enumerate(labels) if i not in drop]


@register("aten.expand", "aten.expand_as", "aten.broadcast_to")
def _expand(ctx: OpContext):
    src = ctx.arg(0)
    labels, shape, out = ctx.labels_of(src), ctx.shape(src), ctx.out_shape()
    lead = len(out) - len(shape)
    res = [WILD if s > 1 else None for s in out[:lead]]
    for i, (lab, s) in enumerate(zip(labels, shape)):
        # a broadcast size-1 axis is a replication whose count follows the configuration
        res.append(lab if s == out[lead + i] else WILD)
    return res


@register("aten.slice")
def _slice(ctx: OpContext):
    src = ctx.arg(0)
    labels, shape = list(ctx.labels_of(src)), ctx.shape(src)
    dim = norm_dim(ctx.kwarg("dim", 1, 0), len(shape))
    if is_labeled(labels[dim]):
        start, end, step = ctx.kwarg("start", 2, None), ctx.kwarg("end", 3, None), ctx.kwarg("step", 4, 1)
        sl = labels[dim][slice(start, end, step)]
        labels[dim] = sl if len(sl) > 1 else None
    return labels


@register("aten.narrow")
def _narrow(ctx: OpContext):
    src = ctx.arg(0)
    labels, shape = list(ctx.labels_of(src)), ctx.shape(src)
    dim = norm_dim(ctx.arg(1), len(shape))
    if is_labeled(labels[dim]):
        start, length = ctx.arg(2), ctx.arg(3)
        labels[dim] = labels[dim][start : start + length]
    return labels


@register("aten.select")
def _select(ctx: OpContext):
    src = ctx.arg(0)
    labels = list(ctx.labels_of(src))
    dim = norm_dim(ctx.arg(1), len(labels))
    if is_labeled(labels[dim]):
        pin_all(ctx, [labels[dim]], "a single channel is selected by index")
    del labels[dim]
    return labels


def _split_pieces(ctx: OpContext, sizes: list[int], dim: int):
    src = ctx.arg(0)
    labels = ctx.labels_of(src)
    dim = norm_dim(dim, len(labels))
    outs, pos = [], 0
    for s in sizes:
        piece = list(labels)
        if is_labeled(labels[dim]):
            sub = labels[dim][pos : pos + s]
            piece[dim] = sub if s > 1 else None
        pos += s
        outs.append(piece)
    return tuple(outs)


@register("aten.split_with_sizes", "aten.split_with_sizes_copy")
def _split_with_sizes(ctx: OpContext):
    return _split_pieces(ctx, list(ctx.arg(1)), ctx.kwarg("dim", 2, 0))


@register("aten.split", "aten.chunk", "aten.unsafe_split", "aten.tensor_split")
def _split(ctx: OpContext):
    vals = ctx.node.meta["val"]
    dim = ctx.kwarg("dim", 2, 0)
    rank = len(ctx.shape(ctx.arg(0)))
    sizes = [int(v.shape[norm_dim(dim, rank)]) for v in vals]
    return _split_pieces(ctx, sizes, dim)


@register("aten.unbind")
def _unbind(ctx: OpContext):
    labels = list(ctx.labels_of(ctx.arg(0)))
    dim = norm_dim(ctx.kwarg("dim", 1, 0), len(labels))
    if is_labeled(labels[dim]):
        pin_all(ctx, [labels[dim]], "channels are unbound into separate tensors")
    del labels[dim]
    return tuple(list(labels) for _ in ctx.node.meta["val"])


@register("getitem")
def _getitem(ctx: OpContext):
    parent, idx = ctx.arg(0), ctx.arg(1)
    labels = ctx.labels_of(parent)
    if isinstance(labels, tuple):
        return labels[idx]
    return None


@register("aten.cat", "aten.concat", "aten.concatenate")
def _cat(ctx: OpContext):
    tensors = [t for t in ctx.arg(0) if is_tensor_node(t)]
    rank = len(ctx.out_shape())
    dim = norm_dim(ctx.kwarg("dim", 1, 0), rank)
    tensors = [t for t in tensors if len(ctx.shape(t)) == rank]  # legacy cat skips empty 1-D tensors
    if any(ctx.shape(t)[dim] > 0 for t in tensors):  # zero-width pieces carry no channels
        tensors = [t for t in tensors if ctx.shape(t)[dim] > 0]
    out = []
    for d in range(rank):
        if d == dim:
            parts = [ctx.labels_of(t)[d] for t in tensors]
            if all(is_labeled(p) for p in parts):
                import torch

                out.append(torch.cat(parts))
            else:
                pin_all(ctx, [p for p in parts if is_labeled(p)], "concatenated with constant channels")
                out.append(None)
        else:
            out.append(combine(ctx, [(ctx.labels_of(t)[d], ctx.shape(t)[d]) for t in tensors], f"axis {d}"))
    return out


@register("aten.stack")
def _stack(ctx: OpContext):
    tensors = [t for t in ctx.arg(0) if is_tensor_node(t)]
    rank = len(ctx.out_shape())
    dim = norm_dim(ctx.kwarg("dim", 1, 0), rank)
    inner = broadcast(ctx, tensors, ctx.shape(tensors[0]))
    inner.insert(dim, None)
    return inner


@register("aten.pad", "aten.constant_pad_nd")
def _pad(ctx: OpContext):
    src = ctx.arg(0)
    labels = list(ctx.labels_of(src))
    pads = list(ctx.arg(1))
    for k in range(0, len(pads), 2):
        d = len(labels) - 1 - k // 2
        if (pads[k] or pads[k + 1]) and is_labeled(labels[d]):
            pin_all(ctx, [labels[d]], "padded along channels")
            labels[d] = None
    return labels


@register("aten.repeat_interleave")
def _repeat_interleave(ctx: OpContext):
    src = ctx.arg(0)
    if not is_tensor_node(src):
        return [None]
    labels, shape, out = list(ctx.labels_of(src)), ctx.shape(src), ctx.out_shape()
    dim = ctx.kwarg("dim", 2, None)
    if dim is None:
        pin_all(ctx, labels, "flattened by repeat_interleave")
        return [None]
    dim = norm_dim(dim, len(shape))
    reps = out[dim] // shape[dim]
    if is_labeled(labels[dim]) and reps > 1:
        labels[dim] = ctx.algebra.merge([labels[dim], None], [shape[dim], reps], origin=ctx.where())
    elif reps > 1:
        labels[dim] = WILD if shape[dim] == 1 else None
    return labels


@register("aten.repeat")
def _repeat(ctx: OpContext):
    src = ctx.arg(0)
    labels, shape = list(ctx.labels_of(src)), ctx.shape(src)
    reps = list(ctx.arg(1))
    lead = len(reps) - len(shape)
    res = [None] * lead
    for i, (lab, s) in enumerate(zip(labels, shape)):
        r = reps[lead + i]
        if r > 1 and is_labeled(lab):
            res.append(ctx.algebra.merge([None, lab], [r, s], origin=ctx.where()))
        else:
            res.append(lab if r == 1 else None)
    return res


@register("aten.flip", "aten.roll", "aten.index_select", "aten.gather", "aten.take_along_dim")
def _pin_reorder(ctx: OpContext):
    src = ctx.arg(0)
    labels = list(ctx.labels_of(src))
    pin_all(ctx, labels, "channels are reordered or gathered")
    if str(ctx.node.target).startswith(("aten.flip", "aten.roll")):
        return labels
    return [None] * len(ctx.out_shape())


@register("aten.index")
def _index(ctx: OpContext):
    src = ctx.arg(0)
    labels = list(ctx.labels_of(src))
    pin_all(ctx, labels, "advanced indexing")
    return [None] * len(ctx.out_shape())


@register("aten.tril", "aten.triu")
def _tri(ctx: OpContext):
    labels = list(ctx.labels_of(ctx.arg(0)))
    pin_all(ctx, labels[-2:], "triangular mask over channels")
    return labels


_FACTORIES = (
    "aten.zeros",
    "aten.ones",
    "aten.full",
    "aten.empty",
    "aten.new_zeros",
    "aten.new_ones",
    "aten.new_full",
    "aten.new_empty",
    "aten.rand",
    "aten.randn",
    "aten.empty_strided",
    "aten.scalar_tensor",
)


@register(*_FACTORIES)
def _factory(ctx: OpContext):
    """A tensor built from sizes: its axes follow the configuration, so they adopt any labels."""
    return [WILD if s > 1 else None for s in ctx.out_shape()]


@register("aten.arange", "aten.linspace")
def _arange(ctx: OpContext):
    return [None] * len(ctx.out_shape())


__all__ = ["reshape_labels", "tensor_inputs"]
