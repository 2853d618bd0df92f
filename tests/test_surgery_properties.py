"""Property tests of structured surgery (``prunekit.soft_zero`` / ``prunekit.remove``) on random small models.

Every example builds a random tiny Llama, Mistral, Qwen2, Mamba or Mamba-2 (1-2 layers, random widths,
GQA ratios, tied or untied embeddings, biases), gives it O(1) random weights, traces it and draws a valid
decision from the traced groups. The properties:

1. groups that no normalization spans: hard removal computes exactly what soft-zeroing computes;
2. norm-spanned groups (the residual stream, Mamba-2 heads): hard removal computes what soft-zeroing
   computes once each spanned RMSNorm is corrected to average over the kept channels only;
3. a pruned model (pruned once, or twice with a fresh trace in between) generates with a cache, and
   every cached greedy step equals a full recomputation without cache;
4. parameter counts and shapes drop by exactly the removed member entries, and kept entries are the
   original entries;
5. bad decisions raise :class:`prunekit.SurgeryError` and leave the model bit-identical.

Attention decisions include uneven query heads per KV group (indexed attention, see
:mod:`prunekit.families.kv_index`). The runs are reproducible under the "ci" profile. Each test runs 8
examples per family; the whole file takes about 2.5 minutes on 2 CPU cores, nearly all of it in
``prunekit.trace``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import pytest
import torch
from conftest import examples
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from hypothesis.strategies import DataObject

import prunekit
from prunekit import SurgeryError
from prunekit.engine.surgery import check_units
from prunekit.families import get_adapter

FAMILIES = ("llama", "mistral", "qwen2", "mamba", "mamba2")
ATOL = RTOL = 1e-4

# no shrinking: each example traces a model (~0.5 s), so shrinking a failure takes many minutes; the
# failing draws are printed in full (every draw is labelled); the "ci" profile makes them replayable
PROPERTY = settings(
    max_examples=examples(8),
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --------------------------------------------------------------------------------------------- models
@dataclass
class Case:
    family: str
    model: torch.nn.Module
    graph: prunekit.DependencyGraph
    ids: torch.Tensor


@st.composite
def configs(draw, family: str, grouped: bool = False):
    """A small HF config of ``family``. ``grouped`` forces >= 2 KV groups (B/C groups) of >= 2 heads."""
    from transformers import LlamaConfig, Mamba2Config, MambaConfig, MistralConfig, Qwen2Config

    common = dict(
        vocab_size=draw(st.integers(8, 40)),
        num_hidden_layers=draw(st.integers(1, 2)),
        tie_word_embeddings=draw(st.booleans()),
        bos_token_id=0,
        eos_token_id=None,
        pad_token_id=0,
    )
    # a large epsilon makes a wrong epsilon correction in property 2 visible
    eps = draw(st.sampled_from([1e-6, 1e-1]))
    if family in ("llama", "mistral", "qwen2"):
        n_kv = draw(st.integers(2 if grouped else 1, 3))
        rep = draw(st.integers(2 if grouped else 1, 3))
        if n_kv * rep == 1:
            rep = 2  # one head leaves nothing to prune
        kw = dict(
            # HF checks hidden % heads == 0 even when head_dim is given; head_dim stays independent
            hidden_size=n_kv * rep * draw(st.integers(1, 2)),
            num_attention_heads=n_kv * rep,
            num_key_value_heads=n_kv,
            head_dim=draw(st.sampled_from([2, 4])),
            intermediate_size=draw(st.integers(2, 16)),
            rms_norm_eps=eps,
            max_position_embeddings=64,
            **common,
        )
        if family == "llama":
            return LlamaConfig(attention_bias=draw(st.booleans()), **kw)
        if family == "mistral":
            return MistralConfig(sliding_window=draw(st.sampled_from([None, 3])), **kw)
        return Qwen2Config(**kw)  # Qwen2 always has biases on q, k and v
    if family == "mamba":
        return MambaConfig(
            hidden_size=draw(st.sampled_from([4, 6, 8])),
            expand=draw(st.sampled_from([1, 2])),
            state_size=draw(st.integers(2, 5)),
            time_step_rank=draw(st.integers(2, 4)),
            conv_kernel=draw(st.integers(2, 4)),
            use_bias=draw(st.booleans()),
            use_conv_bias=draw(st.booleans()),
            layer_norm_epsilon=eps,
            **common,
        )
    assert family == "mamba2"
    n_groups = draw(st.integers(2 if grouped else 1, 3))
    per_group = draw(st.integers(2 if grouped or n_groups == 1 else 1, 3))
    head_dim = draw(st.sampled_from([2, 4]))
    inner = n_groups * per_group * head_dim
    expand = draw(st.sampled_from([1, 2]))  # HF requires num_heads * head_dim == expand * hidden_size
    return Mamba2Config(
        hidden_size=inner // expand,
        expand=expand,
        num_heads=n_groups * per_group,
        head_dim=head_dim,
        n_groups=n_groups,
        state_size=draw(st.integers(2, 4)),
        conv_kernel=draw(st.integers(2, 4)),
        chunk_size=draw(st.sampled_from([2, 8])),  # HF pads a sequence to whole chunks
        use_bias=draw(st.booleans()),
        use_conv_bias=draw(st.booleans()),
        layer_norm_epsilon=eps,
        **common,
    )


@torch.no_grad()
def _randomize(model: torch.nn.Module) -> None:
    """O(1) activations and logits (HF's 0.02 init makes every logit ~0 and atol meaningless)."""
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if p.dim() >= 2:
            p.copy_(torch.randn(p.shape) / math.sqrt(p[0].numel()))
        elif "norm" in name or leaf == "D":
            p.uniform_(0.5, 1.5)
        elif leaf == "A_log":
            p.uniform_(-1.0, 1.0)
        else:
            p.normal_(0.0, 0.5)


def _build(data: DataObject, family: str, grouped: bool = False) -> Case:
    from transformers import (
        LlamaForCausalLM,
        Mamba2ForCausalLM,
        MambaForCausalLM,
        MistralForCausalLM,
        Qwen2ForCausalLM,
    )

    classes = {
        "llama": LlamaForCausalLM,
        "mistral": MistralForCausalLM,
        "qwen2": Qwen2ForCausalLM,
        "mamba": MambaForCausalLM,
        "mamba2": Mamba2ForCausalLM,
    }
    config = data.draw(configs(family, grouped), label="config")
    torch.manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    model = classes[family](config).eval()
    _randomize(model)
    seq = data.draw(st.integers(3, 7), label="seq_len")
    ids = torch.randint(0, config.vocab_size, (2, seq))
    return Case(family, model, prunekit.trace(model), ids)


# ------------------------------------------------------------------------------------------ decisions
def draw_units(data: DataObject, group: prunekit.Group) -> list[int]:
    """A random valid, non-empty set of units to drop from ``group``.

    For grouped heads: drop some whole KV (B/C) groups, and the same number of query heads from every
    other one, so each surviving group keeps the same count; or, for attention (the Llama families run
    uneven KV groups through indexed attention), any query heads at all.
    """
    n = group.num_units
    uneven = group.role == "attention" and data.draw(st.booleans(), label=f"uneven {group.name}")
    if not group.num_outer or uneven:
        k = data.draw(st.integers(1, n - 1), label=f"count {group.name}")
        return sorted(data.draw(st.permutations(range(n)), label=f"units {group.name}")[:k])
    outer, per = group.num_outer, group.units_per_outer
    gone = data.draw(st.integers(0 if per > 1 else 1, outer - 1), label=f"whole groups {group.name}")
    keep = data.draw(st.integers(1, per - (1 if gone == 0 else 0)), label=f"kept per group {group.name}")
    order = data.draw(st.permutations(range(outer)), label=f"group order {group.name}")
    units = []
    for o in order[:gone]:
        units += range(o * per, (o + 1) * per)
    for o in order[gone:]:
        heads = data.draw(st.permutations(range(per)), label=f"heads of group {o}")
        units += [o * per + h for h in heads[: per - keep]]
    event(f"{group.role} in {outer} groups: {gone} dropped whole, {keep}/{per} kept in the others")
    return sorted(units)


def draw_decision(data: DataObject, groups: list[prunekit.Group]) -> list[tuple[prunekit.Group, list[int]]]:
    """A non-empty subset of ``groups``, each with a valid set of units."""
    assert groups
    chosen = data.draw(
        st.lists(st.sampled_from(range(len(groups))), min_size=1, max_size=len(groups), unique=True),
        label="groups",
    )
    return [(groups[i], draw_units(data, groups[i])) for i in sorted(chosen)]


def _unspanned(case: Case) -> list[prunekit.Group]:
    return [g for g in case.graph.groups if not g.norm_spanned]


def _spanned(case: Case) -> list[prunekit.Group]:
    return [g for g in case.graph.groups if g.norm_spanned]


# ----------------------------------------------------------------------------------------- reference
def removed_positions(member: prunekit.Member, group: prunekit.Group, units) -> torch.Tensor:
    """Positions of ``member`` that go, computed here from the group's definition (not surgery's)."""
    drop = {int(u) for u in units}
    if member.per_outer:  # a KV head (B/C group) goes only with all of its query heads
        per = group.units_per_outer
        drop = {o for o in range(group.num_outer) if set(range(o * per, (o + 1) * per)) <= drop}
    chosen = torch.tensor(sorted(drop), dtype=torch.long)
    return member.positions[torch.isin(member.units, chosen)]


def removed_by_dim(decision) -> dict[tuple[str, int], torch.Tensor]:
    out: dict[tuple[str, int], set[int]] = {}
    for group, units in decision:
        for m in group.members:
            out.setdefault((m.param, m.dim), set()).update(removed_positions(m, group, units).tolist())
    return {k: torch.tensor(sorted(v), dtype=torch.long) for k, v in out.items() if v}


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())  # shared (tied) parameters once


def assert_shrunk_exactly(before: dict[str, torch.Tensor], model, decision) -> None:
    """Property 4: shapes, kept values and the parameter count follow from the decision alone."""
    cuts = removed_by_dim(decision)
    after = dict(model.named_parameters())
    assert after.keys() == before.keys()
    expected_drop = 0
    for name, old in before.items():
        new = after[name].detach()
        kept = old
        for d in range(old.dim()):
            pos = cuts.get((name, d))
            if pos is not None:
                mask = torch.ones(old.shape[d], dtype=torch.bool)
                mask[pos] = False
                kept = kept.index_select(d, torch.nonzero(mask).flatten())
        assert new.shape == kept.shape, f"{name}: {tuple(new.shape)} != expected {tuple(kept.shape)}"
        assert torch.equal(new, kept), f"{name}: kept entries changed"
        expected_drop += old.numel() - kept.numel()
    before_count = sum(t.numel() for t in {id(t): t for t in before.values()}.values())
    # named_parameters() already lists a tied parameter once, under its canonical name
    assert before_count - _count(model) == expected_drop


def assert_attributes_consistent(case: Case) -> None:
    """Module attributes and config fields agree with the (shrunk) parameter shapes."""
    model, cfg = case.model, case.model.config
    emb = model.get_input_embeddings().weight
    hidden = emb.shape[1]
    assert cfg.hidden_size == hidden
    assert model.get_output_embeddings().weight.shape[1] == hidden
    if case.family in ("llama", "mistral", "qwen2"):
        assert model.model.norm.weight.shape == (hidden,)
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            hd = attn.head_dim
            assert attn.q_proj.out_features % hd == 0 and attn.k_proj.out_features % hd == 0
            n_q, n_kv = attn.q_proj.out_features // hd, attn.k_proj.out_features // hd
            sizes = getattr(attn, "prunekit_kv_group_sizes", None) or [n_q // n_kv] * n_kv
            assert len(sizes) == n_kv and sum(sizes) == n_q and min(sizes) >= 1
            if len(set(sizes)) > 1:  # uneven: one gathered KV head per query head
                assert attn.num_key_value_groups == 1
                owner = [kv for kv, size in enumerate(sizes) for _ in range(size)]
                assert attn.prunekit_kv_index.tolist() == owner
                assert cfg._attn_implementation.startswith("prunekit_kv_index")
            else:
                assert attn.num_key_value_groups * n_kv == n_q
            assert attn.v_proj.out_features == attn.k_proj.out_features
            assert attn.o_proj.in_features == n_q * hd
            assert mlp.intermediate_size == mlp.gate_proj.out_features == mlp.down_proj.in_features
            assert layer.input_layernorm.weight.shape == (hidden,)
            assert layer.post_attention_layernorm.weight.shape == (hidden,)
        return
    assert model.backbone.norm_f.weight.shape == (hidden,)
    for layer in model.backbone.layers:
        mix = layer.mixer
        assert layer.norm.weight.shape == (hidden,)
        assert mix.hidden_size == mix.in_proj.in_features == mix.out_proj.out_features == hidden
        if case.family == "mamba":
            inner = mix.intermediate_size
            assert inner == mix.out_proj.in_features == mix.conv1d.out_channels == mix.D.shape[0]
            assert mix.conv1d.in_channels == mix.conv1d.groups == inner
            assert mix.in_proj.out_features == 2 * inner
            assert mix.A_log.shape == (inner, mix.ssm_state_size)
            assert mix.dt_proj.in_features == mix.time_step_rank
            assert mix.x_proj.out_features == mix.time_step_rank + 2 * mix.ssm_state_size
        else:
            heads, groups = mix.num_heads, mix.n_groups
            assert heads == mix.A_log.shape[0] == mix.D.shape[0] == mix.dt_bias.shape[0]
            assert heads % groups == 0
            assert mix.intermediate_size == heads * mix.head_dim == mix.out_proj.in_features
            assert mix.conv_dim == mix.intermediate_size + 2 * groups * mix.ssm_state_size
            assert mix.conv1d.out_channels == mix.conv1d.in_channels == mix.conv1d.groups == mix.conv_dim
            assert mix.in_proj.out_features == mix.intermediate_size + mix.conv_dim + heads
            assert mix.norm.weight.shape == (mix.intermediate_size,)
            assert mix.norm.group_size * groups == mix.intermediate_size


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, use_cache=False).logits


@torch.no_grad()
def correct_norms(soft: torch.nn.Module, decision) -> None:
    """Make each spanned RMSNorm of a soft-zeroed model average over the kept channels only.

    An RMSNorm over a group of C channels computes ``w * x / sqrt(mean_C(x^2) + eps)``. When C - K of
    them are zero, ``mean_C(x^2) = (K / C) * mean_K(x^2)``, so with r = K / C::

        w' * x / sqrt(r * mean_K(x^2) + eps') = (w' / sqrt(r)) * x / sqrt(mean_K(x^2) + eps' / r)

    which equals the pruned norm ``w * x / sqrt(mean_K(x^2) + eps)`` for ``eps' = r * eps`` and
    ``w' = sqrt(r) * w``. Llama's and Mamba's RMSNorms have one group (the whole hidden size); Mamba-2's
    gated norm (``MambaRMSNormGated``) normalizes each block of ``group_size = intermediate / n_groups``
    channels, i.e. one block per B/C group. A valid decision leaves the same K in every surviving block,
    so one scalar r per norm module suffices; blocks that go entirely are zero in the soft model and
    contribute nothing downstream (their ``out_proj`` columns are zero).
    """
    cuts = removed_by_dim(decision)
    for group, _units in decision:
        for norm_name in group.norm_spanned:
            norm = soft.get_submodule(norm_name)
            size = norm.weight.shape[0]
            block = getattr(norm, "group_size", size)
            gone = torch.zeros(size, dtype=torch.bool)
            pos = cuts.get((f"{norm_name}.weight", 0))
            assert pos is not None, f"{norm_name} spans {group.name} but its weight is not a member"
            gone[pos] = True
            kept = (~gone).view(-1, block).sum(-1)
            surviving = kept[kept > 0]
            assert surviving.numel() and bool((surviving == surviving[0]).all()), kept.tolist()
            r = int(surviving[0]) / block
            norm.variance_epsilon = norm.variance_epsilon * r
            norm.weight.mul_(math.sqrt(r))


def assert_removal_matches_soft_zero(case: Case, decision, correct: bool = False) -> None:
    """Remove ``decision`` from a copy of the model and compare it with a soft-zeroed copy.

    Also checks property 4 (exact shrinking) and the module attributes on the pruned copy.
    """
    hard = Case(case.family, copy.deepcopy(case.model), case.graph, case.ids)
    soft = copy.deepcopy(case.model)
    prunekit.soft_zero(soft, decision, shapes=case.graph.param_shapes)
    before = _params(hard.model)
    changed = prunekit.remove(hard.model, decision, shapes=case.graph.param_shapes)
    assert changed, "a non-empty decision must shrink something"
    assert_shrunk_exactly(before, hard.model, decision)
    assert_attributes_consistent(hard)
    if correct:
        correct_norms(soft, decision)
    torch.testing.assert_close(_logits(hard.model, case.ids), _logits(soft, case.ids), atol=ATOL, rtol=RTOL)


def _in_graph_order(case: Case, groups) -> list[prunekit.Group]:
    return [g for g in case.graph.groups if any(g is c for c in groups)]


# ------------------------------------------------------------------------------------------ property 1
@pytest.mark.parametrize("family", FAMILIES)
@PROPERTY
@given(data=st.data())
def test_removing_unspanned_units_equals_soft_zeroing_them(family, data):
    """MLP channels, attention heads, Mamba inner channels, dt rank, state dims: exact equivalence.

    One trace per example: every such group alone, then a random subset of them in one decision.
    """
    case = _build(data, family)
    groups = _unspanned(case)
    assert groups
    for g in groups:
        event(f"group alone: {g.role}")
        assert_removal_matches_soft_zero(case, [(g, draw_units(data, g))])
    if len(groups) > 1:
        assert_removal_matches_soft_zero(case, draw_decision(data, groups))


# ------------------------------------------------------------------------------------------ property 2
@pytest.mark.parametrize("family", FAMILIES)
@PROPERTY
@given(data=st.data())
def test_removing_norm_spanned_units_equals_soft_zeroing_with_corrected_norms(family, data):
    """Residual channels, and Mamba-2 heads under the gated norm: each alone, then all of them at once
    together with a random subset of the other groups.

    :func:`correct_norms` derives the correction; leaving out either its epsilon or its weight part
    makes this test fail (epsilon is drawn large in half the configs so that it matters).
    """
    case = _build(data, family)
    spanned = _spanned(case)
    assert any(g.role == "residual" for g in spanned)
    if family == "mamba2":
        # the gated norm averages over each B/C group's heads; with one head per group it spans none
        cfg = case.model.config
        expected = {"residual", "ssm_heads"} if cfg.n_groups < cfg.num_heads else {"residual"}
        assert {g.role for g in spanned} == expected
    for g in spanned:
        event(f"spanned group: {g.role}")
        assert_removal_matches_soft_zero(case, [(g, draw_units(data, g))], correct=True)
    others = _unspanned(case)
    extra = data.draw(st.lists(st.sampled_from(others), unique_by=id, max_size=len(others)), label="extra")
    joint = _in_graph_order(case, spanned + extra)
    assert_removal_matches_soft_zero(case, [(g, draw_units(data, g)) for g in joint], correct=True)


# ------------------------------------------------------------------------------------------ property 3
@pytest.mark.parametrize("family", FAMILIES)
@PROPERTY
@given(data=st.data())
def test_pruned_model_generates_with_cache_like_full_recomputation(family, data):
    """After one removal, or two with a fresh trace in between (per-layer sizes now differ)."""
    case = _build(data, family)
    prunekit.remove(case.model, draw_decision(data, case.graph.groups), shapes=case.graph.param_shapes)
    if data.draw(st.booleans(), label="prune again"):
        graph = prunekit.trace(case.model)
        groups = [g for g in graph.groups if g.num_units > 1]
        if groups:
            event("pruned twice")
            prunekit.remove(case.model, draw_decision(data, groups), shapes=graph.param_shapes)
    model, ids, steps = case.model, case.ids, 4
    out = model.generate(
        ids,
        # explicit: generate would otherwise mask every prompt token equal to pad_token_id
        attention_mask=torch.ones_like(ids),
        max_new_tokens=steps,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=0,
    )
    seq = out.sequences
    assert seq.shape == (ids.shape[0], ids.shape[1] + steps)
    assert torch.equal(seq[:, : ids.shape[1]], ids)
    for i in range(steps):
        full = _logits(model, seq[:, : ids.shape[1] + i])[:, -1]
        torch.testing.assert_close(out.logits[i], full, atol=ATOL, rtol=RTOL)
        # greedy: the cached run picked the recomputation's argmax (up to a numerical tie)
        picked = full.gather(1, seq[:, ids.shape[1] + i, None]).squeeze(1)
        assert bool((picked >= full.max(-1).values - ATOL).all()), f"step {i}"


# ------------------------------------------------------------------------------------------ property 4
@pytest.mark.parametrize("family", FAMILIES)
@PROPERTY
@given(data=st.data())
def test_parameter_count_drops_by_exactly_the_removed_entries(family, data):
    """Every group at once (the residual stream and the groups inside blocks cut the same parameters
    along different dims), then a random subset; shapes, kept values and counts in
    :func:`assert_shrunk_exactly`, and surgery's own report of what changed."""
    case = _build(data, family)
    everything = [(g, draw_units(data, g)) for g in case.graph.groups]
    for decision in (everything, draw_decision(data, case.graph.groups)):
        model = copy.deepcopy(case.model)
        before_count, before = _count(model), _params(model)
        changed = prunekit.remove(model, decision, shapes=case.graph.param_shapes)
        assert_shrunk_exactly(before, model, decision)
        assert set(changed) == {param for param, _dim in removed_by_dim(decision)}
        drop = sum(math.prod(old) - math.prod(new) for old, new in changed.values())
        assert before_count - _count(model) == drop > 0
        assert_attributes_consistent(Case(family, model, case.graph, case.ids))
        assert torch.isfinite(_logits(model, case.ids)).all()


# ------------------------------------------------------------------------------------------ property 5
def _snapshot(model) -> tuple[dict[str, torch.Tensor], dict]:
    return {k: v.clone() for k, v in model.state_dict().items()}, model.config.to_dict()


def _assert_unchanged(model, snap) -> None:
    state, config = snap
    now = model.state_dict()
    assert now.keys() == state.keys()
    for key, value in state.items():
        assert now[key].shape == value.shape and torch.equal(now[key], value), key
    assert model.config.to_dict() == config


def _bad_decisions(data: DataObject, case: Case):
    """(why, decision) pairs that surgery must refuse."""
    groups = case.graph.groups
    g = data.draw(st.sampled_from(groups), label="bad group")
    other = data.draw(st.sampled_from([x for x in groups if x is not g] or [g]), label="valid group")
    n = g.num_units
    yield "all units", [(g, list(range(n)))]
    yield "index too large", [(g, [n])]
    yield "negative index", [(g, [-1])]
    yield "duplicate index", [(g, [0, 0])]
    yield "group twice", [(g, [0]), (g, [1])] if n > 2 else [(g, []), (g, [])]
    # a valid pair first: nothing may change before the bad one is seen
    if other is not g:
        yield "valid then bad", [(other, draw_units(data, other)), (g, list(range(n)))]
    adapter = get_adapter(case.model)
    for h in groups:
        if h.num_outer and h.num_outer >= 2 and h.units_per_outer >= 2:
            if adapter.runs_uneven_groups(case.model, h):
                continue  # Llama-family attention runs uneven KV groups (indexed attention)
            # one query head from one KV group only: the groups would keep different counts
            o = data.draw(st.integers(0, h.num_outer - 1), label="uneven group")
            yield "uneven heads", [(h, [o * h.units_per_outer])]


@pytest.mark.parametrize("family", FAMILIES)
@PROPERTY
@given(data=st.data())
def test_bad_decisions_raise_and_leave_the_model_bit_identical(family, data):
    case = _build(data, family, grouped=family in ("llama", "mistral", "qwen2", "mamba2"))
    model, shapes = case.model, case.graph.param_shapes
    snap = _snapshot(model)
    seen = set()
    for why, decision in _bad_decisions(data, case):
        seen.add(why)
        # soft zeros can express uneven heads in any family; only removal needs the family to run them
        for op in (prunekit.remove,) if why == "uneven heads" else (prunekit.remove, prunekit.soft_zero):
            with pytest.raises(SurgeryError):
                op(model, decision, shapes=shapes)
            _assert_unchanged(model, snap)
        if why not in ("group twice", "valid then bad"):
            with pytest.raises(SurgeryError):
                check_units(*decision[0], uneven=why != "uneven heads")
    if family == "mamba2":  # the Llama families run uneven KV groups, so there it is no bad decision
        assert "uneven heads" in seen
    # stale trace: positions refer to shapes that no longer exist
    g = data.draw(st.sampled_from(case.graph.groups), label="stale group")
    units = draw_units(data, g)
    prunekit.remove(model, [(g, units)], shapes=shapes)
    snap = _snapshot(model)
    for op in (prunekit.remove, prunekit.soft_zero):
        with pytest.raises(SurgeryError, match="trace it again"):
            op(model, [(g, units)], shapes=shapes)
        _assert_unchanged(model, snap)


# ------------------------------------------------------------------------------------------ regressions
def test_mamba2_heads_with_one_bc_group_each_take_their_group_along():
    """n_groups == num_heads: the trace folds the B/C groups into the heads (no outer units), so removing
    a head removes its B/C rows too; Mamba-2's n_groups must follow, or the forward's split fails."""
    from transformers import Mamba2Config, Mamba2ForCausalLM

    config = Mamba2Config(
        vocab_size=8, hidden_size=6, num_heads=3, head_dim=2, n_groups=3, state_size=2, expand=1,
        conv_kernel=2, num_hidden_layers=1, chunk_size=2, eos_token_id=None, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Mamba2ForCausalLM(config).eval()
    _randomize(model)
    case = Case("mamba2", model, prunekit.trace(model), torch.randint(0, 8, (2, 5)))
    heads = case.graph.by_role("ssm_heads")[0]
    assert heads.num_outer is None and not heads.norm_spanned
    assert_removal_matches_soft_zero(case, [(heads, [0])])
    prunekit.remove(model, [(heads, [0])], shapes=case.graph.param_shapes)
    assert model.backbone.layers[0].mixer.n_groups == model.config.n_groups == 2
