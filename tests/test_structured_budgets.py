"""Structured budgets as the reference code defines them, on random small models of every family.

- uniform: ``int(n * ratio)`` units of every group (never more), so the removed parameter share of each
  block never exceeds the request by more than one unit's parameters;
- global (AL-AM): the removed share of all targeted parameters never exceeds the request;
- the report's achieved share is the share counted on the pruned model;
- sequential structured calibration scores each block on the already-pruned blocks' outputs;
- an option the call does not use is an error naming it, and the model is left unchanged.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import examples, make_tiny_llama
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Mamba2Config,
    Mamba2ForCausalLM,
    MambaConfig,
    MambaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

import prunekit
from prunekit.families import get_adapter
from prunekit.methods.select import budget

pytestmark = pytest.mark.usefixtures("one_thread")
FAMILIES = ("llama", "mistral", "qwen2", "mamba", "mamba2")


@st.composite
def models(draw, family: str):
    seed = draw(st.integers(0, 1000), label="seed")
    torch.manual_seed(seed)
    layers = draw(st.integers(1, 3), label="layers")
    if family in ("llama", "mistral", "qwen2"):
        n_kv = draw(st.integers(1, 3), label="kv heads")
        n_q = n_kv * draw(st.integers(1, 4), label="heads per kv")
        kw = dict(
            vocab_size=64, hidden_size=8 * n_q, intermediate_size=draw(st.integers(8, 40), label="mlp"),
            num_hidden_layers=layers, num_attention_heads=n_q, num_key_value_heads=n_kv, head_dim=8,
        )  # fmt: skip
        cls = {"llama": (LlamaConfig, LlamaForCausalLM), "mistral": (MistralConfig, MistralForCausalLM)}
        config, model = cls.get(family, (Qwen2Config, Qwen2ForCausalLM))
        return model(config(**kw)).eval()
    if family == "mamba":
        cfg = MambaConfig(
            vocab_size=64, hidden_size=16, state_size=4, num_hidden_layers=layers,
            expand=draw(st.integers(1, 3), label="expand"), conv_kernel=3, time_step_rank=4,
        )  # fmt: skip
        return MambaForCausalLM(cfg).eval()
    n_groups = draw(st.integers(1, 2), label="bc groups")
    heads = n_groups * draw(st.integers(1, 4), label="heads per group")
    cfg = Mamba2Config(
        vocab_size=64, hidden_size=2 * heads, state_size=4, num_hidden_layers=layers, head_dim=4,
        num_heads=heads, expand=2, n_groups=n_groups, conv_kernel=3, chunk_size=8,
    )  # fmt: skip
    return Mamba2ForCausalLM(cfg).eval()


def _member_params(model, groups) -> list[int]:
    """Per block: the parameters of every tensor a targeted group cuts (weights and biases alike; what
    the budgets refer to)."""
    adapter = get_adapter(model)
    names = {p for g in groups for p in g.params}
    return [
        sum(p.numel() for n, p in b.named_parameters(prefix=prefix) if n in names)
        for prefix, b in ((_name(model, b), b) for b in adapter.layers(model))
    ]


def _name(model, module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


def _largest_unit(model, graph, groups) -> list[int]:
    """Per block: the parameters of the largest unit of any targeted group in it (a unit's members)."""
    out = [0] * len(get_adapter(model).layers(model))
    for g in groups:
        i = g.layer_index()
        per_unit = sum(model.get_parameter(m.param).numel() // model.get_parameter(m.param).shape[m.dim]
                       * len(m.positions) for m in g.members) / g.num_units  # fmt: skip
        per_unit += per_unit if g.num_outer else 0  # a KV head can leave with its last query head
        out[i] = max(out[i], int(per_unit) + 1)
    return out


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=examples(6), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    search=st.sampled_from(["uniform", "global"]),
    ratio=st.sampled_from([0.1, 0.2, 0.35, 0.5, 0.7]),
    method=st.sampled_from(["wanda-sp", "flap", "magnitude-sp"]),
)
def test_removed_share_never_exceeds_the_request_by_more_than_a_unit(family, data, search, ratio, method):
    model = data.draw(models(family), label="model")
    ids = torch.randint(3, 64, (4, 12), generator=torch.Generator().manual_seed(0))
    graph = prunekit.trace(model)
    adapter = get_adapter(model)
    groups = [g for g in graph.groups if g.role in adapter.default_structured_roles]
    assume(groups)  # e.g. Mamba-2 with one head per B/C group and a 1-wide state: nothing to prune
    before = _member_params(model, groups)
    slack = _largest_unit(model, graph, groups)
    report = prunekit.prune(
        model, method=method, sparsity=ratio, structure="structured", structure_search=search,
        calibration=None if method == "magnitude-sp" else ids,
    )  # fmt: skip
    after = _member_params(model, groups)
    removed = [b - a for b, a in zip(before, after)]
    if search == "uniform":
        for b, r, s in zip(before, removed, slack):
            assert r <= ratio * b + s
        for group in groups:  # int(n * ratio) units, never more (at least one kept)
            got = len(report.removed[_key(group)])
            assert got <= min(budget(group.num_units, ratio), group.num_units - 1)
    else:
        assert sum(removed) <= ratio * sum(before) + 1e-6 * sum(before)
    blocks = [r for r in report.rows if r.name != "(other)"]
    counted = 1 - sum(p.numel() for b in adapter.layers(model) for p in b.parameters()) / sum(
        r.params_before for r in blocks
    )
    assert report.achieved == pytest.approx(counted, abs=1e-12)
    totals = report.unit_totals
    for role, (b, a) in totals.items():
        assert b - a == sum(len(v) for k, v in report.removed.items() if k.endswith(f"({role})"))


def _key(group) -> str:
    from prunekit.engine.report import short_layer_name

    return f"{short_layer_name(group.name) or group.role} ({group.role})"


def test_sequential_scores_each_block_after_pruning_the_ones_before():
    """Sequential Wanda-sp on two blocks equals pruning block 0, then scoring block 1 on that model."""
    ids = torch.randint(3, 64, (6, 16), generator=torch.Generator().manual_seed(1))
    base = make_tiny_llama(seed=21)
    seq = copy.deepcopy(base)
    report = prunekit.prune(
        seq, method="wanda-sp", sparsity=0.4, structure="structured", calibration=ids, mode="soft",
        calibration_mode="sequential",
    )  # fmt: skip
    assert report.options["calibration_mode"] == "sequential"
    by_hand = copy.deepcopy(base)
    first = prunekit.prune(
        by_hand, method="wanda-sp", sparsity=0.4, structure="structured", calibration=ids, mode="soft",
        calibration_mode="dense", targets=["re:layers\\.0\\."],
    )  # fmt: skip
    second = prunekit.prune(
        by_hand, method="wanda-sp", sparsity=0.4, structure="structured", calibration=ids, mode="soft",
        calibration_mode="dense", targets=["re:layers\\.1\\."],
    )  # fmt: skip
    assert report.removed == {**first.removed, **second.removed}
    dense = prunekit.prune(
        copy.deepcopy(base), method="wanda-sp", sparsity=0.4, structure="structured", calibration=ids,
        mode="soft", calibration_mode="dense",
    )  # fmt: skip
    assert dense.options["calibration_mode"] == "dense"
    for name, value in seq.state_dict().items():
        torch.testing.assert_close(value, by_hand.state_dict()[name], rtol=1e-5, atol=1e-6)


def test_sequential_with_the_global_search_is_refused_before_anything_changes():
    model = make_tiny_llama(seed=22)
    state = copy.deepcopy(model.state_dict())
    ids = torch.randint(3, 64, (2, 8))
    with pytest.raises(ValueError, match="calibration_mode='dense'"):
        prunekit.prune(model, method="flap", sparsity=0.3, calibration=ids, calibration_mode="sequential")
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"method": "flap", "allocation": "owl"}, "allocation"),
        ({"method": "wanda-sp", "granularity": "row"}, "granularity"),
        ({"method": "wanda", "structure": "unstructured", "gqa": "groups"}, "gqa"),
        ({"method": "wanda", "structure": "unstructured", "bias_compensation": True}, "bias_compensation"),
        (
            {"method": "wanda", "structure": "2:4", "sparsity": 0.5, "structure_search": "global"},
            "structure_search",
        ),
        ({"method": "wanda", "structure": "unstructured", "owl_lambda": 0.1}, "owl_lambda"),
        ({"method": "flap", "logistic": {"first": 1}}, "logistic"),
        ({"method": "magnitude-sp", "calibration_mode": "dense"}, "calibration_mode"),
        ({"method": "wanda", "structure": "unstructured", "refit": True}, "refit"),
    ],
)
def test_an_option_the_call_does_not_use_is_an_error_naming_it(kwargs, named):
    model = make_tiny_llama(seed=23)
    state = copy.deepcopy(model.state_dict())
    ids = torch.randint(3, 64, (2, 8))
    with pytest.raises(ValueError, match=named):
        prunekit.prune(model, calibration=ids, **{"sparsity": 0.3, **kwargs})
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_a_family_that_needs_equal_heads_per_group_reports_the_shortfall():
    """Mamba-2 repeats each B/C group over its heads uniformly: 20 % of 8 heads in 2 groups asks for 1
    head, which it cannot express; nothing is removed there and the report says why."""
    torch.manual_seed(0)
    cfg = Mamba2Config(
        vocab_size=64, hidden_size=16, state_size=4, num_hidden_layers=1, head_dim=4, num_heads=8,
        expand=2, n_groups=2, conv_kernel=3, chunk_size=8,
    )  # fmt: skip
    model = Mamba2ForCausalLM(cfg).eval()
    ids = torch.randint(3, 64, (2, 8))
    report = prunekit.prune(model, method="wanda-sp", sparsity=0.2, calibration=ids, targets=["ssm_heads"])
    assert model.backbone.layers[0].mixer.num_heads == 8
    assert any("1 of 8 units asked, 0 removed" in n and "same number of heads" in n for n in report.notes)
    assert "note:" in str(report)


def test_dense_blocks_stay_whole_and_the_others_carry_the_whole_share():
    """Two of four blocks spared: the other two lose twice the ratio, the total share is the request."""
    torch.manual_seed(3)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=40, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(3, 64, (4, 12), generator=torch.Generator().manual_seed(0))
    graph = prunekit.trace(model)
    groups = [g for g in graph.groups if g.role in ("attention", "mlp")]
    before = _member_params(model, groups)
    report = prunekit.prune(
        model, method="wanda-sp", sparsity=0.2, calibration=ids, structure_search="global", dense_blocks=1
    )
    after = _member_params(model, groups)
    assert after[0] == before[0] and after[3] == before[3]
    assert not any(k.startswith(("layers.0.", "layers.3.")) for k in report.removed)
    removed = sum(before) - sum(after)
    assert 0.2 * sum(before) - 2 * 8 * 32 * 2 <= removed <= 0.2 * sum(before)
    with pytest.raises(ValueError, match="cannot come from"):
        prunekit.prune(model, method="wanda-sp", sparsity=0.6, calibration=ids, dense_blocks=(1, 2))
    with pytest.raises(ValueError, match="dense_blocks"):
        prunekit.prune(model, method="wanda-sp", sparsity=0.2, calibration=ids, dense_blocks=-1)
