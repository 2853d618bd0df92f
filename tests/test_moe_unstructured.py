"""Mixture-of-experts weights under unstructured and N:M pruning: every expert's matrices are pruned as
the method defines, with statistics from the tokens routed to that expert (prunekit/engine/experts.py)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import (
    AutoModelForCausalLM,
    GptOssConfig,
    GraniteMoeConfig,
    JetMoeConfig,
    MixtralConfig,
    OlmoeConfig,
    Qwen2MoeConfig,
)
from transformers.models.mixtral.modeling_mixtral import MixtralExperts

import prunekit
from prunekit.engine.experts import ExpertsSplit, UnknownExperts, find_experts, split_experts
from prunekit.engine.stats import StatsCollector
from prunekit.methods.select import Selection
from prunekit.methods.statistics import Hessian, SquaredNorms

SMALL = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
CONFIGS = {
    "mixtral": lambda: MixtralConfig(
        **SMALL, intermediate_size=48, num_local_experts=4, num_experts_per_tok=2
    ),
    "qwen2_moe": lambda: Qwen2MoeConfig(
        **SMALL, intermediate_size=48, moe_intermediate_size=16, shared_expert_intermediate_size=24,
        num_experts=4, num_experts_per_tok=2,
    ),  # fmt: skip
    "olmoe": lambda: OlmoeConfig(**SMALL, intermediate_size=16, num_experts=4, num_experts_per_tok=2),
    "granitemoe": lambda: GraniteMoeConfig(
        **SMALL, intermediate_size=16, num_local_experts=4, num_experts_per_tok=2
    ),
    "gpt_oss": lambda: GptOssConfig(
        **SMALL, intermediate_size=16, num_local_experts=4, num_experts_per_tok=2, head_dim=8
    ),  # transposed [E, in, out] weights with biases, interleaved gate/up and a clamped gate
    "jetmoe": lambda: JetMoeConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_key_value_heads=2, kv_channels=8,
        intermediate_size=16, num_local_experts=4, num_experts_per_tok=2,
    ),  # ParallelExperts: one 3-D weight, inputs grouped by expert (MLP and attention experts)
}  # fmt: skip


def make_moe(family: str = "mixtral", seed: int = 0, **overrides):
    config = CONFIGS[family]()
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def _ids(n=8, length=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, 64, (n, length), generator=g)


def _splits(model) -> list[ExpertsSplit]:
    found = find_experts(model)
    assert found and all(isinstance(s, ExpertsSplit) for s in found), found
    return found


def _expert_params(model) -> dict[str, torch.nn.Parameter]:
    """3-D parameter name -> parameter, of every experts module."""
    return {f"{s.name}.{attr}": p for s in _splits(model) for attr, p in s.params.items()}


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same(model, snapshot):
    state = model.state_dict()
    assert list(state) == list(snapshot)
    for key, value in state.items():
        assert torch.equal(value, snapshot[key]), key


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


# ------------------------------------------------------------------------------ sparsity per expert
@pytest.mark.parametrize(
    ("method", "options"),
    [("magnitude", {}), ("wanda", {}), ("sparsegpt", {}), ("gblm", {}), ("wanda", {"allocation": "owl"})],
)
def test_every_expert_slice_is_pruned_as_the_method_defines(method, options):
    model = make_moe()
    calibration = None if method == "magnitude" else _ids()
    report = prunekit.prune(model, method=method, sparsity=0.5, calibration=calibration, **options)
    per_row = method in ("wanda", "gblm")  # their default granularity; the others count per matrix
    params = _expert_params(model)
    assert set(params) <= set(report.masks)
    for name, param in params.items():
        mask = report.masks[name]
        block = int(name.split(".")[2])
        sparsity = report.block_sparsity.get(block, 0.5)
        assert mask.shape == param.shape and mask.dtype == torch.bool
        assert bool((param[mask] == 0).all()), name
        for e in range(param.shape[0]):
            rows = mask[e]  # [out, in]: Mixtral stores every expert's matrix as F.linear takes it
            if per_row:
                assert (rows.sum(1) == int(rows.shape[1] * sparsity)).all(), (name, e)
            else:
                assert int(rows.sum()) == int(rows.numel() * sparsity), (name, e)
    expert_weights = sum(p.numel() for p in params.values())
    linears = sum(
        m.weight.numel() for n, m in model.model.layers.named_modules() if isinstance(m, torch.nn.Linear)
    )
    assert sum(r.targeted for r in report.rows) == expert_weights + linears


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_two_four_holds_in_every_expert_row(method):
    model = make_moe()
    calibration = None if method == "magnitude" else _ids()
    report = prunekit.prune(model, method=method, structure="2:4", calibration=calibration)
    for name, param in _expert_params(model).items():
        mask = report.masks[name]
        groups = mask.reshape(param.shape[0], param.shape[1], -1, 4)
        assert (groups.sum(-1) == 2).all(), name
        assert bool((param[mask] == 0).all())


def test_transposed_experts_get_masks_in_their_own_orientation_and_rows_per_output():
    model = make_moe("gpt_oss")
    report = prunekit.prune(model, method="wanda", sparsity=0.5, calibration=_ids())
    for name, param in _expert_params(model).items():  # [E, in, out]: a row of F.linear is a column here
        mask = report.masks[name]
        assert mask.shape == param.shape
        assert (mask.sum(1) == param.shape[1] // 2).all(), name
        assert bool((param[mask] == 0).all())


def test_jetmoe_mlp_and_attention_experts_are_pruned_per_expert():
    model = make_moe("jetmoe")
    report = prunekit.prune(model, method="sparsegpt", sparsity=0.5, calibration=_ids())
    params = _expert_params(model)
    assert any("self_attention" in n for n in params) and any(".mlp." in n for n in params)
    for name, param in params.items():
        for e in range(param.shape[0]):
            assert int(report.masks[name][e].sum()) == param[e].numel() // 2, (name, e)


# ------------------------------------------------------------------------------ the split forward
@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_split_forward_equals_the_eager_forward_exactly_and_exit_restores_the_module(family):
    model = make_moe(family)
    ids = _ids(4, 12)
    default = _logits(model, ids)
    if family != "jetmoe":  # the split loop is transformers' eager loop step for step
        model.set_experts_implementation("eager")
    eager = _logits(model, ids)
    splits = _splits(model)
    params = [(n, tuple(p.shape)) for n, p in model.named_parameters()]
    modules = [n for n, _ in model.named_modules()]
    forwards = {s.name: type(s.module).forward for s in splits}
    with split_experts(splits):
        names = {n for n, _ in model.named_modules()}
        assert set(splits[0].targets()) <= names
        split = _logits(model, ids)
    assert torch.equal(split, eager)
    torch.testing.assert_close(split, default, rtol=1e-5, atol=1e-5)  # grouped_mm sums in another order
    assert [(n, tuple(p.shape)) for n, p in model.named_parameters()] == params
    assert [n for n, _ in model.named_modules()] == modules
    for s in splits:
        assert "forward" not in s.module.__dict__ and type(s.module).forward is forwards[s.name]
    assert torch.equal(_logits(model, ids), eager)


def test_split_is_undone_when_the_body_fails():
    model = make_moe()
    splits = _splits(model)
    modules = [n for n, _ in model.named_modules()]
    with pytest.raises(RuntimeError, match="boom"), split_experts(splits):
        raise RuntimeError("boom")
    assert [n for n, _ in model.named_modules()] == modules
    assert all("forward" not in s.module.__dict__ for s in splits)


def test_a_failure_half_way_restores_every_expert_weight():
    model = make_moe()
    snapshot = _state(model)

    def fail(*_args):
        raise RuntimeError("second block fails")

    model.model.layers[1].self_attn.q_proj.register_forward_pre_hook(fail)  # after block 0 is pruned
    with pytest.raises(RuntimeError, match="second block fails"):
        prunekit.prune(model, method="sparsegpt", sparsity=0.5, calibration=_ids())
    _assert_same(model, snapshot)
    assert all("forward" not in s.module.__dict__ for s in _splits(model))


@settings(max_examples=examples(6), deadline=None)
@given(experts=st.integers(1, 5), top_k=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_split_forward_is_exact_for_any_expert_count_and_top_k(experts, top_k, seed):
    model = make_moe(seed=seed, num_local_experts=experts, num_experts_per_tok=min(top_k, experts))
    model.set_experts_implementation("eager")
    ids = _ids(2, 8, seed)
    eager = _logits(model, ids)
    with split_experts(_splits(model)):
        assert torch.equal(_logits(model, ids), eager)


# ------------------------------------------------------------------------------ per-expert statistics
def _routing(model, layer: int, ids):
    """(hidden_states, top_k_index) the layer's experts module receives for ``ids``."""
    seen = {}

    def hook(_mod, args):
        seen["hidden"], seen["index"] = args[0].detach(), args[1].detach()

    handle = model.model.layers[layer].mlp.experts.register_forward_pre_hook(hook)
    try:
        _logits(model, ids)
    finally:
        handle.remove()
    return seen["hidden"], seen["index"]


def test_each_experts_statistics_come_from_exactly_the_tokens_routed_to_it():
    model = make_moe()
    ids = _ids(4, 16)
    hidden, index = _routing(model, 0, ids)
    split = _splits(model)[0]
    experts = split.module
    linears = {name: lin for name, (lin, _param) in split.targets().items()}
    with split_experts([split]), StatsCollector(linears, [SquaredNorms(), Hessian()]) as collector:
        _logits(model, ids)
    stats = collector.stats()
    for e in range(experts.num_experts):
        x = hidden[(index == e).any(-1)]
        gate, up = F.linear(x, experts.gate_up_proj[e].detach()).chunk(2, dim=-1)
        for attr, inputs in (("gate_up_proj", x), ("down_proj", experts.act_fn(gate) * up)):
            got = stats[f"{split.name}.{e}.{attr}"]
            assert got.n_tokens == x.shape[0] > 0
            assert torch.equal(got[SquaredNorms], (inputs.double() ** 2).sum(0).float())
            torch.testing.assert_close(got[Hessian], 2 * inputs.t() @ inputs / x.shape[0])


def _never_route_to(model, layer: int, expert: int) -> None:
    """Make the layer's router skip ``expert`` (Mixtral's router, with that expert's logit at -inf)."""
    gate = model.model.layers[layer].mlp.gate

    def forward(hidden_states):
        logits = F.linear(hidden_states.reshape(-1, gate.hidden_dim), gate.weight)
        logits[:, expert] = float("-inf")
        probs = torch.softmax(logits.float(), dim=-1)
        top, index = torch.topk(probs, gate.top_k, dim=-1)
        return logits, top / top.sum(-1, keepdim=True), index

    gate.forward = forward


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "gblm"])
def test_an_expert_no_token_reaches_is_pruned_by_magnitude_and_noted(method):
    model = make_moe()
    _never_route_to(model, 0, 3)
    before = {n: p.detach().clone() for n, p in _expert_params(model).items()}
    report = prunekit.prune(model, method=method, sparsity=0.5, calibration=_ids())
    selection = Selection(0.5, per_row=method != "sparsegpt")
    for name in ("model.layers.0.mlp.experts.gate_up_proj", "model.layers.0.mlp.experts.down_proj"):
        magnitude = [selection.mask(before[name][e].abs()) for e in range(4)]
        assert torch.equal(report.masks[name][3], magnitude[3])  # no statistics: by magnitude
        assert not torch.equal(report.masks[name][0], magnitude[0])  # its own tokens' statistics
    noted = [n for n in report.notes if "no calibration token" in n]
    assert {n.split(":")[0] for n in noted} == {
        "model.layers.0.mlp.experts.3.gate_up_proj",
        "model.layers.0.mlp.experts.3.down_proj",
    }


def test_owl_counts_no_outliers_for_an_unreached_expert():
    model = make_moe()
    _never_route_to(model, 1, 0)
    report = prunekit.prune(model, method="wanda", sparsity=0.5, calibration=_ids(), allocation="owl")
    assert set(report.block_sparsity) == {0, 1}
    assert abs(report.achieved - 0.5) < 0.03


# ------------------------------------------------------------------------------ targets
def test_default_targets_leave_the_router_alone_and_patterns_select_experts():
    model = make_moe()
    routers = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("mlp.gate.weight")}
    report = prunekit.prune(copy.deepcopy(model), method="magnitude", sparsity=0.5)
    assert not any(".gate.weight" in n for n in report.masks)
    pruned = copy.deepcopy(model)
    prunekit.prune(pruned, method="magnitude", sparsity=0.5)
    for n, p in pruned.named_parameters():
        if n in routers:
            assert torch.equal(p, routers[n])

    only = prunekit.prune(copy.deepcopy(model), method="magnitude", sparsity=0.5, targets="re:experts")
    assert set(only.masks) == set(_expert_params(model))

    one = prunekit.prune(
        copy.deepcopy(model), method="magnitude", sparsity=0.5, targets="experts.2.down_proj"
    )
    assert set(one.masks) == {"model.layers.0.mlp.experts.down_proj", "model.layers.1.mlp.experts.down_proj"}
    for mask in one.masks.values():
        assert [int(mask[e].sum()) > 0 for e in range(4)] == [False, False, True, False]

    kept = copy.deepcopy(model)
    rest = prunekit.prune(kept, method="magnitude", sparsity=0.5, ignore="mlp.experts.down_proj")
    assert "model.layers.0.mlp.experts.gate_up_proj" in rest.masks
    assert not any(n.endswith("experts.down_proj") for n in rest.masks)
    assert torch.equal(
        kept.model.layers[0].mlp.experts.down_proj, model.model.layers[0].mlp.experts.down_proj
    )


def test_qwen2_moe_prunes_routed_and_shared_experts():
    model = make_moe("qwen2_moe")
    report = prunekit.prune(model, method="wanda", sparsity=0.5, calibration=_ids())
    assert "model.layers.0.mlp.shared_expert.down_proj.weight" in report.masks
    for name, param in _expert_params(model).items():
        assert (report.masks[name].sum(-1) == param.shape[-1] // 2).all(), name


# ------------------------------------------------------------------------------ layouts refused
class FakeExperts(torch.nn.Module):
    """Experts with one 3-D weight and a routed forward: no layout prunekit knows."""

    def __init__(self, experts: int, hidden: int) -> None:
        super().__init__()
        self.num_experts = experts
        self.mix = torch.nn.Parameter(torch.randn(experts, hidden, hidden) * 0.1)

    def forward(self, hidden_states, top_k_index, top_k_weights):
        mixed = torch.einsum("th,ekh->tek", hidden_states, self.mix)
        picked = mixed.gather(1, top_k_index[..., None].expand(-1, -1, mixed.shape[-1]))
        return (picked * top_k_weights[..., None]).sum(1)


class DoubledExperts(MixtralExperts):
    """Mixtral's names and shapes, but a forward that computes something else (twice the output)."""

    def forward(self, hidden_states, top_k_index, top_k_weights):
        return 2 * super().forward(hidden_states, top_k_index, top_k_weights)


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_an_unknown_experts_layout_is_refused_by_name_and_nothing_changes(method):
    model = make_moe()
    model.model.layers[1].mlp.experts = FakeExperts(4, 32)
    snapshot = _state(model)
    calibration = None if method == "magnitude" else _ids()
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.experts \(FakeExperts\)") as err:
        prunekit.prune(model, method=method, sparsity=0.5, calibration=calibration)
    assert "Expected" in str(err.value) and "model.layers.1.mlp.experts.mix" in str(err.value)
    _assert_same(model, snapshot)
    report = prunekit.prune(model, method=method, sparsity=0.5, calibration=calibration, ignore="experts.mix")
    assert "model.layers.0.mlp.experts.gate_up_proj" in report.masks
    assert torch.equal(model.model.layers[1].mlp.experts.mix, snapshot["model.layers.1.mlp.experts.mix"])


def test_familiar_names_with_a_different_forward_are_refused():
    model = make_moe()
    doubled = DoubledExperts(model.config)
    doubled.load_state_dict(model.model.layers[0].mlp.experts.state_dict())
    model.model.layers[0].mlp.experts = doubled
    snapshot = _state(model)
    found = {f.name: f for f in find_experts(model)}
    assert isinstance(found["model.layers.0.mlp.experts"], UnknownExperts)
    with pytest.raises(ValueError, match="computes something other"):
        prunekit.prune(model, method="wanda", sparsity=0.5, calibration=_ids())
    _assert_same(model, snapshot)


def test_offloaded_pruning_refuses_expert_weights_before_writing(tmp_path):
    model = make_moe()
    model.save_pretrained(tmp_path / "in", save_original_format=False)
    with pytest.raises(ValueError, match="mixture-of-experts"):
        prunekit.prune_offloaded(tmp_path / "in", tmp_path / "out", "wanda", 0.5, calibration=_ids())
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ saving
def test_saved_experts_and_their_masks_round_trip(tmp_path):
    model = make_moe()
    report = prunekit.prune(model, method="wanda", sparsity=0.5, calibration=_ids())
    prunekit.save_pretrained(model, tmp_path, report=report)
    masks = prunekit.io.load_masks(tmp_path)
    assert set(masks) == set(report.masks)
    for name, mask in report.masks.items():
        assert torch.equal(masks[name], mask.cpu()), name
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)  # undoes transformers' per-expert checkpoint
    _assert_same(reloaded, model.state_dict())
    params = dict(reloaded.named_parameters())
    for name, mask in masks.items():
        assert bool((params[name][mask] == 0).all()), name


def test_prunekit_from_pretrained_restores_a_pruned_mixtral_exactly(tmp_path):
    model = make_moe()
    report = prunekit.prune(model, method="magnitude", sparsity=0.5)
    prunekit.save_pretrained(model, tmp_path, report=report)
    _assert_same(prunekit.from_pretrained(tmp_path), model.state_dict())
