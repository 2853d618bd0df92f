"""Label rules for arithmetic: elementwise ops, reductions and contractions (linear, matmul, einsum, conv)."""

from __future__ import annotations

import string

from .ops import (
    OpContext,
    UnmappedOpError,
    broadcast,
    combine,
    is_labeled,
    is_tensor_node,
    norm_dim,
    op_name,
    pin_all,
    record_span,
    register,
    tensor_inputs,
)

_ELEMENTWISE = (
    "aten.add",
    "aten.sub",
    "aten.rsub",
    "aten.mul",
    "aten.div",
    "aten.neg",
    "aten.exp",
    "aten.log",
    "aten.silu",
    "aten.gelu",
    "aten.relu",
    "aten.sigmoid",
    "aten.tanh",
    "aten.softplus",
    "aten.pow",
    "aten.rsqrt",
    "aten.sqrt",
    "aten.clamp",
    "aten.clip",
    "aten.abs",
    "aten.maximum",
    "aten.minimum",
    "aten.erf",
    "aten.sin",
    "aten.cos",
    "aten.reciprocal",
    "aten.square",
    "aten.log1p",
    "aten.expm1",
    "aten.where",
    "aten.masked_fill",
    "aten.eq",
    "aten.ne",
    "aten.lt",
    "aten.le",
    "aten.gt",
    "aten.ge",
    "aten.logical_not",
    "aten.logical_and",
    "aten.logical_or",
    "aten.bitwise_not",
    "aten.bitwise_and",
    "aten.bitwise_or",
    "aten.__and__",
    "aten.__or__",
    "aten.sign",
    "aten.floor",
    "aten.ceil",
    "aten.round",
    "aten.hardtanh",
    "aten.leaky_relu",
    "aten.elu",
    "aten.mish",
    "aten.hardswish",
    "aten.hardsigmoid",
    "aten.logit",
    "aten.lerp",
    "aten.addcmul",
    "aten.addcdiv",
    "aten.fmod",
    "aten.remainder",
    "aten.isnan",
    "aten.isinf",
    "aten.nan_to_num",
    "aten.glu_backward",
    "aten.exp2",
    "aten.log2",
    "aten.relu6",
    "aten.gelu_backward",
    "aten.float_power",
    "aten.true_divide",
    "aten.floor_divide",
    "aten.sigmoid_backward",
    "aten.copy",
    "aten.fill",
)


@register(*_ELEMENTWISE)
def _elementwise(ctx: OpContext):
    return broadcast(ctx, tensor_inputs(ctx, ctx.node.args), ctx.out_shape())


#: ops whose output may share storage with their input: writing into it in place changes another tensor
_VIEW_OPS = (
    "aten.slice", "aten.select", "aten.view", "aten._unsafe_view", "aten.as_strided", "aten.transpose",
    "aten.permute", "aten.t", "aten.unsqueeze", "aten.squeeze", "aten.expand", "aten.narrow", "aten.alias",
    "aten.diagonal", "aten.unfold", "aten.split", "aten.chunk", "aten.unbind", "aten.reshape", "getitem",
    "aten.numpy_T", "aten.swapaxes", "aten.split_with_sizes", "aten.detach",
)  # fmt: skip


@register("aten.mul_", "aten.div_", "aten.add_", "aten.sub_", "aten.copy_")
def _inplace(ctx: OpContext):
    """In place, shape-preserving (CTRL scales its embeddings with ``*=``): labels as out of place, and the
    written tensor's later users see the same labels. Writing into a view would change a tensor this rule
    does not see, so that stays unmapped."""
    dst = ctx.node.args[0]
    labeled = any(is_labeled(lab) for x in ctx.node.all_input_nodes for lab in ctx.labels_of(x) or ())
    if labeled and op_name(getattr(dst, "target", None)) in _VIEW_OPS:
        raise UnmappedOpError(
            f"prunekit cannot map the in-place op {ctx.where()} into a view on a prunable dimension"
        )
    return _elementwise(ctx)


def _reduced_dims(ctx: OpContext, rank: int) -> list[int]:
    dims = ctx.kwarg("dim", 1, None)
    if dims is None:
        return list(range(rank))
    if isinstance(dims, int):
        dims = [dims]
    return [norm_dim(d, rank) for d in dims]


@register(
    "aten.mean",
    "aten.sum",
    "aten.var",
    "aten.std",
    "aten.amax",
    "aten.amin",
    "aten.prod",
    "aten.logsumexp",
    "aten.linalg_vector_norm",
    "aten.norm",
    "aten.var_mean",
    "aten.max",
    "aten.min",
    "aten.argmax",
    "aten.argmin",
    "aten.any",
    "aten.all",
    "aten.count_nonzero",
)
def _reduction(ctx: OpContext):
    if str(ctx.node.target) in ("aten.max.other", "aten.min.other"):
        # max/min of two tensors (XGLM's and Apertus' clamp of the scores) is elementwise, not a reduction
        return _elementwise(ctx)
    src = ctx.arg(0)
    labels = list(ctx.labels_of(src))
    rank = len(labels)
    if str(ctx.node.target).startswith("aten.linalg_vector_norm"):
        dims = ctx.kwarg("dim", 2, None)
        dims = list(range(rank)) if dims is None else [norm_dim(d, rank) for d in dims]
    elif str(ctx.node.target) in ("aten.max.default", "aten.min.default") or len(ctx.node.args) < 2:
        dims = list(range(rank))
    else:
        dims = _reduced_dims(ctx, rank)
    for d in dims:
        record_span(ctx, labels[d])
    val = ctx.node.meta.get("val")
    out_rank = len(val[0].shape) if isinstance(val, (tuple, list)) else len(val.shape)
    keep = out_rank == rank
    res = [None if d in dims else lab for d, lab in enumerate(labels)]
    if not keep:
        res = [lab for d, lab in enumerate(res) if d not in dims]
    if isinstance(val, (tuple, list)):
        return tuple(list(res) for _ in val)
    return res


@register("aten._softmax", "aten.softmax", "aten._log_softmax", "aten.log_softmax", "aten.special_softmax")
def _softmax(ctx: OpContext):
    labels = list(ctx.labels_of(ctx.arg(0)))
    record_span(ctx, labels[norm_dim(ctx.arg(1), len(labels))])
    return labels


@register(
    "aten.cumsum",
    "aten.cumprod",
    "aten.cummax",
    "aten.cummin",
    "aten.logcumsumexp",
    "aten.sort",
    "aten.topk",
    "aten.diff",
)
def _scan(ctx: OpContext):
    labels = list(ctx.labels_of(ctx.arg(0)))
    rank = len(labels)
    dim = ctx.kwarg("dim", 2 if "topk" in str(ctx.node.target) else 1, -1)  # topk(input, k, dim)
    if isinstance(dim, int):
        d = norm_dim(dim, rank)
        if is_labeled(labels[d]):
            pin_all(ctx, [labels[d]], "a running or sorting op mixes channels")
    val = ctx.node.meta.get("val")
    if isinstance(val, (tuple, list)):
        return tuple(list(labels) for _ in val)
    if len(val.shape) != rank:
        return [None] * len(val.shape)
    return labels


# ---------------------------------------------------------------------------- contractions
def einsum_labels(ctx: OpContext, operands: list, subscripts: list[str], out_sub: str):
    """The general contraction rule: every letter is one axis; all occurrences of a letter coincide."""
    entries: dict[str, list] = {}
    for x, sub in zip(operands, subscripts):
        if x is None:
            continue
        labels, shape = ctx.labels_of(x), ctx.shape(x)
        for letter, lab, size in zip(sub, labels, shape):
            entries.setdefault(letter, []).append((lab, size))
    merged = {letter: combine(ctx, e, f"index '{letter}'") for letter, e in entries.items()}
    return [merged.get(letter) for letter in out_sub]


def _expand_ellipsis(eq: str, ranks: list[int]) -> tuple[list[str], str]:
    lhs, _, rhs = eq.replace(" ", "").partition("->")
    subs = lhs.split(",")
    used = set(eq) - set(".,->")
    spare = [c for c in string.ascii_letters if c not in used]
    ell_len = max((r - len(s.replace("...", "")) for s, r in zip(subs, ranks) if "..." in s), default=0)
    ell = "".join(spare[:ell_len])
    out_subs = []
    for s, r in zip(subs, ranks):
        if "..." in s:
            n = r - len(s.replace("...", ""))
            s = s.replace("...", ell[ell_len - n :])
        out_subs.append(s)
    if not _:
        rhs = "".join(sorted(c for c in set("".join(out_subs)) if "".join(out_subs).count(c) == 1))
        rhs = ell + rhs.replace(ell, "") if ell else rhs
    else:
        rhs = rhs.replace("...", ell)
    return out_subs, rhs


@register("aten.einsum")
def _einsum(ctx: OpContext):
    eq, operands = ctx.arg(0), list(ctx.arg(1))
    subs, rhs = _expand_ellipsis(eq, [len(ctx.shape(x)) for x in operands])
    return einsum_labels(ctx, operands, subs, rhs)


@register("aten.linear")
def _linear(ctx: OpContext):
    x, w, b = ctx.arg(0), ctx.arg(1), ctx.arg(2)
    rank = len(ctx.shape(x))
    batch = string.ascii_lowercase[: rank - 1]
    out = einsum_labels(ctx, [x, w], [batch + "I", "OI"], batch + "O")
    if is_tensor_node(b):
        out = einsum_labels(ctx, [x, w, b], [batch + "I", "OI", "O"], batch + "O")
    return out


def _matmul_subs(ra: int, rb: int) -> tuple[str, str, str]:
    letters = "abcdefgh"
    if ra == 1 and rb == 1:
        return "K", "K", ""
    if ra == 1:
        batch = letters[: rb - 2]
        return "K", batch + "KN", batch + "N"
    if rb == 1:
        batch = letters[: ra - 2]
        return batch + "MK", "K", batch + "M"
    nb = max(ra, rb) - 2
    batch = letters[:nb]
    return batch[nb - (ra - 2) :] + "MK", batch[nb - (rb - 2) :] + "KN", batch + "MN"


@register("aten.matmul", "aten.mm", "aten.bmm")
def _matmul(ctx: OpContext):
    a, b = ctx.arg(0), ctx.arg(1)
    sa, sb, so = _matmul_subs(len(ctx.shape(a)), len(ctx.shape(b)))
    return einsum_labels(ctx, [a, b], [sa, sb], so)


@register("aten.addmm", "aten.baddbmm")
def _addmm(ctx: OpContext):
    bias, a, b = ctx.arg(0), ctx.arg(1), ctx.arg(2)
    sa, sb, so = _matmul_subs(len(ctx.shape(a)), len(ctx.shape(b)))
    out = einsum_labels(ctx, [a, b], [sa, sb], so)
    return broadcast_with(ctx, out, bias)


def broadcast_with(ctx: OpContext, labels: list, other) -> list:
    """Combine already computed output labels with one more broadcast operand (a bias)."""
    shape_o, shape_b = ctx.out_shape(), ctx.shape(other)
    blabels = ctx.labels_of(other)
    res = []
    for d, lab in enumerate(labels):
        k = d - (len(shape_o) - len(shape_b))
        entries = [(lab, shape_o[d])]
        if k >= 0:
            entries.append((blabels[k], shape_b[k]))
        res.append(combine(ctx, entries, f"axis {d}"))
    return res


@register("aten.embedding")
def _embedding(ctx: OpContext):
    w, ids = ctx.arg(0), ctx.arg(1)
    wl = ctx.labels_of(w)
    if is_labeled(wl[0]):
        ctx.uf.pin(wl[0], f"rows are looked up by token id in {ctx.where()}")
    return [None] * len(ctx.shape(ids)) + [wl[1]]


@register("aten.conv1d", "aten.convolution", "aten.conv2d")
def _conv(ctx: OpContext):
    x, w, b = ctx.arg(0), ctx.arg(1), ctx.arg(2)
    groups = ctx.kwarg("groups", 8 if "convolution" in str(ctx.node.target) else 6, 1) or 1
    xl, wl = ctx.labels_of(x), ctx.labels_of(w)
    wshape = ctx.shape(w)
    for k in range(2, len(wl)):
        if is_labeled(wl[k]):
            ctx.uf.pin(wl[k], f"kernel taps of {ctx.where()}")
    out = [xl[0]] + [None] * (len(ctx.out_shape()) - 1)
    cin = ctx.shape(x)[1]
    if groups == 1:
        combine(ctx, [(xl[1], cin), (wl[1], wshape[1])], "input channels")
        out[1] = wl[0]
    elif groups == cin and wshape[1] == 1 and wshape[0] == cin:
        out[1] = combine(ctx, [(xl[1], cin), (wl[0], wshape[0])], "depthwise channels")
    else:
        pin_all(ctx, [xl[1], wl[0], wl[1]], f"grouped convolution with {groups} groups")
        out[1] = None
    if is_tensor_node(b):
        out[1] = combine(ctx, [(out[1], wshape[0]), (ctx.labels_of(b)[0], wshape[0])], "bias")
    for d in range(2, len(out)):
        out[d] = None
    return out


@register("aten.scaled_dot_product_attention", "aten._scaled_dot_product_flash_attention_for_cpu")
def _sdpa(ctx: OpContext):
    """softmax(q kᵀ) v per head; with ``enable_gqa`` the key/value heads are repeated to the query heads."""
    q, k, v = ctx.arg(0), ctx.arg(1), ctx.arg(2)
    mask = ctx.kwarg("attn_mask", 3, None)
    qs, ks = ctx.shape(q), ctx.shape(k)
    kl, vl = list(ctx.labels_of(k)), list(ctx.labels_of(v))
    hq, hk = qs[-3], ks[-3]
    if hq != hk:
        reps = hq // hk
        kl[-3] = (
            ctx.algebra.merge([kl[-3], None], [hk, reps], origin=ctx.where()) if is_labeled(kl[-3]) else None
        )
        vl[-3] = (
            ctx.algebra.merge([vl[-3], None], [hk, reps], origin=ctx.where()) if is_labeled(vl[-3]) else None
        )
    ql = ctx.labels_of(q)
    rank = len(qs)
    batch = "abcd"[: rank - 3]
    scores = {}
    for letter, lab, size in zip(batch + "hle", ql, qs):
        scores.setdefault(letter, []).append((lab, size))
    for letter, lab, size in zip(batch + "hse", kl, ks[:-3] + (hq,) + ks[-2:]):
        scores.setdefault(letter, []).append((lab, size))
    vs = ctx.shape(v)
    for letter, lab, size in zip(batch + "hsv", vl, vs[:-3] + (hq,) + vs[-2:]):
        scores.setdefault(letter, []).append((lab, size))
    if is_tensor_node(mask):
        ms = ctx.shape(mask)
        for letter, lab, size in zip((batch + "hls")[-len(ms) :], ctx.labels_of(mask), ms):
            scores.setdefault(letter, []).append((lab, size))
    merged = {letter: combine(ctx, e, f"index '{letter}'") for letter, e in scores.items()}
    record_span(ctx, merged.get("s"))
    out = [merged[c] for c in batch + "hlv"]
    target = str(ctx.node.target)
    if "flash" in target:
        return (out, [merged[c] for c in batch + "hl"])
    return out


def _norm_over_last(ctx: OpContext, weight_pos: int, bias_pos: int | None) -> list:
    """``layer_norm``/``rms_norm``: elementwise with weight and bias, and a span over the normalised dims."""
    x = ctx.arg(0)
    params = [
        p
        for p in (ctx.arg(weight_pos), ctx.arg(bias_pos) if bias_pos is not None else None)
        if is_tensor_node(p)
    ]
    out = broadcast(ctx, [x, *params], ctx.shape(x))
    for d in range(len(out) - len(ctx.arg(1)), len(out)):
        record_span(ctx, out[d])
    return out


@register("aten.layer_norm")
def _layer_norm(ctx: OpContext):
    return _norm_over_last(ctx, 2, 3)


@register("aten.rms_norm")
def _rms_norm(ctx: OpContext):
    return _norm_over_last(ctx, 2, None)


@register("aten.native_layer_norm")
def _native_layer_norm(ctx: OpContext):
    out = _norm_over_last(ctx, 2, 3)
    n = len(ctx.arg(1))
    stats = [lab if i < len(out) - n else None for i, lab in enumerate(out)]
    return out, stats, list(stats)
