"""Structured scorers (FLAP, Wanda-sp, magnitude-sp), structure search and bias compensation."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tiny_llama, make_tiny_mamba, make_tiny_mamba2

import prunekit
from prunekit.engine.structured_writes import consumers
from prunekit.methods.budgets import global_drops


def _ids(n=8, length=16, seed=0):
    return torch.randint(2, 64, (n, length), generator=torch.Generator().manual_seed(seed))


FAMILIES = {"llama": make_tiny_llama, "mamba": make_tiny_mamba, "mamba2": make_tiny_mamba2}


def _inputs_of(model, module_name, ids):
    box = []
    handle = model.get_submodule(module_name).register_forward_pre_hook(
        lambda _m, a: box.append(a[0].detach())
    )
    with torch.no_grad():
        model(ids)
    handle.remove()
    x = torch.cat([b.reshape(-1, b.shape[-1]) for b in box])
    return x


@pytest.mark.parametrize("family", ["llama", "mamba"])
@pytest.mark.parametrize("method", ["flap", "wanda-sp", "magnitude-sp"])
def test_hard_removal_with_compensation_matches_soft_masking(family, method):
    hard, soft = FAMILIES[family](), FAMILIES[family]()
    kwargs = dict(
        method=method, sparsity=0.4, structure="structured", calibration=_ids(), bias_compensation=True
    )
    report = prunekit.prune(hard, **kwargs)
    prunekit.prune(soft, mode="soft", **kwargs)
    assert report.compensated and report.params_after < report.params_before
    ids = torch.randint(2, 64, (2, 12))
    torch.testing.assert_close(hard(ids).logits, soft(ids).logits, atol=1e-4, rtol=0)
    out = hard.generate(ids[:, :4], max_new_tokens=4, do_sample=False)
    assert out.shape == (2, 8)


def test_mamba2_heads_are_removed_and_the_model_runs():
    model = make_tiny_mamba2()
    report = prunekit.prune(
        model, method="flap", sparsity=0.5, structure="structured", calibration=_ids(), gqa="heads"
    )
    mixer = model.backbone.layers[0].mixer
    assert mixer.num_heads == 4 and mixer.A_log.shape == (4,) and mixer.out_proj.in_features == 16
    assert any("mixer" in name for name in report.compensated)
    out = model.generate(torch.tensor([[3, 4, 5]]), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 7)


def test_bias_compensation_lowers_each_output_projection_error():
    dense = make_tiny_llama(seed=11)
    ids = _ids(16, 24)
    errors = {}
    for compensate in (False, True):
        model = copy.deepcopy(dense)
        prunekit.prune(
            model,
            method="flap",
            sparsity=0.4,
            structure="structured",
            calibration=ids,
            bias_compensation=compensate,
            structure_search="uniform",
            mode="soft",
        )
        for layer in range(2):
            for proj in ("self_attn.o_proj", "mlp.down_proj"):
                name = f"model.layers.{layer}.{proj}"
                x = _inputs_of(dense, name, ids)
                want = dense.get_submodule(name)(x)
                got = model.get_submodule(name)(x * (model.get_submodule(name).weight.abs().sum(0) > 0))
                errors[(compensate, name)] = float(((want - got) ** 2).sum().detach())
    for layer in range(2):
        for proj in ("self_attn.o_proj", "mlp.down_proj"):
            name = f"model.layers.{layer}.{proj}"
            assert errors[(True, name)] < errors[(False, name)], name


def test_compensation_creates_a_recorded_bias():
    model = make_tiny_llama(seed=12)
    assert model.model.layers[0].mlp.down_proj.bias is None
    prunekit.prune(model, method="flap", sparsity=0.25, structure="structured", calibration=_ids())
    assert model.model.layers[0].mlp.down_proj.bias is not None
    assert "model.layers.0.mlp.down_proj" in model.config.prunekit_added_biases


def test_flap_unit_scores_follow_the_weighted_fluctuation():
    model = make_tiny_llama(seed=13)
    ids = _ids()
    graph = prunekit.trace(model)
    group = graph.find("model.layers.0.mlp")
    (consumer,) = consumers(group)
    x = _inputs_of(model, consumer.module, ids)
    w = model.get_parameter(consumer.param)
    expected = x.var(0, unbiased=False) * (w * w).sum(0)
    from prunekit.methods.scorers import get_scorer
    from prunekit.methods.statistics import MeanVar, ModuleStats, Moments

    stats = {consumer.module: ModuleStats({Moments: MeanVar(x.mean(0), x.var(0, unbiased=False))})}
    got = get_scorer("flap").unit_scores(group, {p: model.get_parameter(p) for p in group.params}, stats)
    torch.testing.assert_close(got.float(), expected[consumer.positions], rtol=1e-5, atol=1e-6)


def test_global_search_spends_the_parameter_budget_across_groups():
    model = make_tiny_llama(seed=14)
    graph = prunekit.trace(model)
    groups = [g for g in graph.groups if g.role in ("mlp", "attention")]
    scores = [torch.arange(g.num_units, dtype=torch.float64) * (1 + i) for i, g in enumerate(groups)]
    sizes = [96.0 if g.role == "mlp" else 4 * 32 * 8 / 1 for g in groups]
    drops = global_drops(groups, scores, sizes, 0.3, "heads")
    removed = sum(len(d) * s for d, s in zip(drops, sizes))
    total = sum(g.num_units * s for g, s in zip(groups, sizes))
    # grouped heads go in whole steps; the unspent rest goes to MLP channels, one channel short at most
    channel = max(s for g, s in zip(groups, sizes) if not g.num_outer)
    assert 0.3 * total - channel <= removed <= 0.3 * total
    assert all(len(d) < g.num_units for d, g in zip(drops, groups))
    assert all(torch.equal(d, torch.arange(len(d))) or g.num_outer for d, g in zip(drops, groups))


def test_structured_flap_needs_calibration_and_leaves_model_unchanged():
    model = make_tiny_llama(seed=15)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="needs calibration"):
        prunekit.prune(model, method="flap", sparsity=0.3, structure="structured")
    with pytest.raises(ValueError, match="bias compensation needs calibration"):
        prunekit.prune(
            model, method="magnitude", sparsity=0.3, structure="structured", bias_compensation=True
        )
    with pytest.raises(ValueError, match="does not support unstructured"):
        prunekit.prune(model, method="flap", sparsity=0.3, calibration=_ids(), structure="unstructured")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_round_to_keeps_channel_counts_multiples_and_allows_nm_afterwards():
    model = make_tiny_llama(seed=16)
    prunekit.prune(model, method="flap", sparsity=0.3, structure="structured", calibration=_ids(), round_to=8)
    widths = [layer.mlp.gate_proj.out_features for layer in model.model.layers]
    assert all(w % 8 == 0 and w < 48 for w in widths)
    report = prunekit.prune(model, method="wanda", structure="2:4", calibration=_ids())
    assert report.achieved == pytest.approx(0.5)


def test_report_counts_units_and_matmul_flops_per_block():
    model = make_tiny_llama(seed=17)
    report = prunekit.prune(
        model, method="flap", sparsity=0.3, calibration=_ids(), structure_search="uniform"
    )
    for i, layer in enumerate(model.model.layers):
        units = report.units[f"layers.{i}"]
        assert units["mlp"] == (48, layer.mlp.gate_proj.out_features)
        assert units["attention"] == (4, layer.self_attn.q_proj.out_features // 8)
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert report.flops_per_token[1] == 2 * sum(m.weight.numel() for m in linear)
    assert report.flops_per_token[1] < report.flops_per_token[0]
    assert "units per block" in str(report) and "matmul FLOPs per token" in str(report)


@pytest.mark.parametrize("family", ["mamba", "mamba2"])
def test_state_dimensions_prune_structurally(family):
    model = FAMILIES[family]()
    report = prunekit.prune(
        model, method="magnitude", sparsity=0.5, structure="structured", targets=["ssm_state"]
    )
    assert report.units["layers.0"]["ssm_state"] == (4, 2)
    assert model.config.state_size == 2
    mixer = model.backbone.layers[0].mixer
    assert mixer.ssm_state_size == 2 and mixer.A_log.shape[-1 if family == "mamba" else 0] in (2, 8)
    out = model.generate(torch.tensor([[3, 4, 5]]), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 6)


def test_taylor_drops_the_mlp_channels_of_lowest_first_order_saliency():
    """Independent reference: autograd on a copy, saliency |w·g| summed over gate/up rows and down columns."""
    model = make_tiny_llama(seed=3)
    ids = _ids(n=4, length=16, seed=5)
    ref = copy.deepcopy(model)
    loss = sum(ref(input_ids=row[None], labels=row[None]).loss for row in ids)
    loss.backward()
    mlp = ref.model.layers[1].mlp
    saliency = sum(
        (getattr(mlp, name).weight * getattr(mlp, name).weight.grad).abs().sum(dim=1)
        for name in ("gate_proj", "up_proj")
    ) + (mlp.down_proj.weight * mlp.down_proj.weight.grad).abs().sum(dim=0)
    report = prunekit.prune(
        model, method="taylor", sparsity=0.25, calibration=ids, targets=["mlp"], structure_search="uniform"
    )
    removed = report.removed[next(n for n in report.removed if n.startswith("layers.1.mlp"))]
    expected = sorted(torch.argsort(saliency.detach(), stable=True)[:12].tolist())
    assert removed == expected
    assert model.model.layers[1].mlp.down_proj.in_features == 36


@pytest.mark.parametrize("family", ["mamba", "mamba2"])
def test_taylor_prunes_ssm_groups_including_state_dimensions(family):
    model = FAMILIES[family]()
    before = sum(p.numel() for p in model.parameters())
    report = prunekit.prune(model, method="taylor", sparsity=0.5, calibration=_ids(4), targets=["ssm_state"])
    assert report.units["layers.0"]["ssm_state"] == (4, 2)
    assert sum(p.numel() for p in model.parameters()) < before
    out = model.generate(torch.tensor([[3, 4, 5]]), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 6)


def test_taylor_without_calibration_fails_before_touching_the_model():
    model = make_tiny_llama()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="needs calibration"):
        prunekit.prune(model, method="taylor", sparsity=0.2)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_per_layer_ratios_apply_to_their_blocks_and_default_to_sparsity():
    model = make_tiny_llama()
    report = prunekit.prune(
        model, method="flap", sparsity=0.25, calibration=_ids(), targets=["mlp"], layer_sparsity={1: 0.5}
    )
    assert report.units["layers.0"]["mlp"] == (48, 36)
    assert report.units["layers.1"]["mlp"] == (48, 24)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"layer_sparsity": [0.2, 1.0], "targets": ["attention"]}, "would remove all"),
        ({"layer_sparsity": [0.2, 1.0], "targets": ["attention"], "gqa": "groups"}, "would remove all 2 KV"),
        ({"layer_sparsity": {5: 0.2}}, "has 2 blocks"),
        ({"layer_sparsity": [0.2, 1.5]}, r"layer_sparsity\[1\]"),
        ({"structure_search": "per-layer"}, "needs layer_sparsity"),
        ({"layer_sparsity": [0.2, 0.2], "structure_search": "global"}, "per-layer"),
    ],
)
def test_per_layer_ratio_errors_name_the_problem_and_leave_the_model_unchanged(options, message):
    model = make_tiny_llama()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises((ValueError, TypeError), match=message):
        prunekit.prune(model, method="flap", sparsity=0.2, calibration=_ids(), **options)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert getattr(model.config, "prunekit_layers", None) is None
