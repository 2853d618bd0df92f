"""Structured pruning of mixtures of experts: expert channels, whole experts, and a hybrid with all kinds.

The conformance suite checks every MoE family's removal against soft zeros and against routing around
removed experts; these tests check what a call promises on top: the share, the tie between the experts
of a layer, the router's top-k floor, the bad inputs, and a Granite-4 hybrid whose attention, Mamba-2
heads, shared MLP and experts all shrink in one call.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conformance import randomize
from family_configs import build, tiny_config
from hypothesis import given, settings
from hypothesis import strategies as st

import prunekit

pytestmark = pytest.mark.usefixtures("one_thread")

IDS = torch.randint(3, 100, (4, 16), generator=torch.Generator().manual_seed(3))


def moe(model_type: str = "mixtral", **overrides) -> torch.nn.Module:
    config = tiny_config(model_type)
    for key, value in overrides.items():
        setattr(config, key, value)
    model = build(model_type, config=config)
    randomize(model)
    return model


def experts_of(model) -> list[torch.nn.Module]:
    return [m for n, m in model.named_modules() if n.endswith(".experts") and hasattr(m, "down_proj")]


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


_DENSE = moe()


@settings(max_examples=6, deadline=None)
@given(
    sparsity=st.sampled_from([0.2, 0.3, 0.5, 0.7]),
    search=st.sampled_from(["uniform", "global"]),
    method=st.sampled_from(["wanda-sp", "flap", "magnitude-sp"]),
)
def test_expert_channels_are_cut_equally_within_the_share(sparsity, search, method):
    model = copy.deepcopy(_DENSE)
    before = {id(m): m.down_proj.shape for m in experts_of(model)}
    widths = [m.down_proj.shape[2] for m in experts_of(model)]
    kw = {"structure_search": search, "calibration_mode": "dense"} if search == "global" else {}
    report = prunekit.prune(
        model, method=method, sparsity=sparsity, structure="structured", calibration=IDS,
        targets=["expert_channels"], **kw,
    )  # fmt: skip
    kept = [m.down_proj.shape[2] for m in experts_of(model)]
    assert all(k % 8 == 0 and k >= 8 for k in kept), kept  # grouped_mm rows of 16 bytes
    removed = sum(w - k for w, k in zip(widths, kept))
    assert removed <= int(sparsity * sum(widths)) + 0  # never more than asked
    if search == "uniform":  # int(n * ratio) per expert, rounded down to keep a multiple of 8
        want = [w - -(-(w - int(w * sparsity)) // 8) * 8 for w in widths]
        assert [w - k for w, k in zip(widths, kept)] == want
    for m in experts_of(model):  # one tensor per layer: gate/up rows and down columns agree
        assert m.gate_up_proj.shape[1] == 2 * m.down_proj.shape[2] and m.down_proj.shape[0] == 4
        assert id(m) in before
    rows = [r for r in report.units.values()]
    assert all(r["expert_channels"][1] == k for r, k in zip(rows, kept))
    with torch.no_grad():
        assert torch.isfinite(model(IDS).logits).all()


def test_whole_experts_leave_with_their_router_rows_and_reload(tmp_path):
    model = moe()
    report = prunekit.prune(
        model, method="wanda-sp", sparsity=0.5, structure="structured", calibration=IDS, targets=["experts"]
    )
    for layer in model.model.layers:
        assert layer.mlp.gate.weight.shape[0] == 2 == layer.mlp.experts.num_experts
        assert layer.mlp.experts.gate_up_proj.shape[0] == layer.mlp.experts.down_proj.shape[0] == 2
    assert model.config.num_local_experts == 2
    assert all(row["experts"] == (4, 2) for row in report.units.values())
    again = prunekit.from_pretrained(prunekit.save_pretrained(model, tmp_path))
    with torch.no_grad():
        assert torch.equal(again(IDS).logits, model(IDS).logits)


def test_the_router_keeps_its_top_k_experts():
    model = moe()
    report = prunekit.prune(
        model, method="magnitude-sp", sparsity=0.9, structure="structured", targets=["experts"]
    )
    assert all(layer.mlp.gate.weight.shape[0] == 2 for layer in model.model.layers)  # top-2 routing
    assert any("keeps at least 2" in note for note in report.notes)


def test_an_expert_is_scored_by_its_channels():
    """An expert whose output projection is a thousand times weaker than the others' has the lowest
    channel scores, so it is the expert that goes."""
    model = moe()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.experts.down_proj[2] *= 1e-3
    report = prunekit.prune(
        model, method="wanda-sp", sparsity=0.25, structure="structured", calibration=IDS, targets=["experts"]
    )
    assert [units for name, units in report.removed.items() if "(experts)" in name] == [[2], [2]]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"targets": ["experts"], "mode": "soft"}, "re-routes tokens"),
        ({"targets": ["experts", "expert_channels"]}, "counted twice|count the channels"),
        ({"method": "taylor", "targets": ["expert_channels"]}, "full-model gradients"),
        ({"targets": ["experts"], "calibration_mode": "sequential"}, "calibration_mode='dense'"),
    ],
)
def test_what_experts_cannot_take_is_refused_untouched(options, message):
    model = moe()
    before = state(model)
    kw = {"method": "wanda-sp", "sparsity": 0.5, "structure": "structured", "calibration": IDS, **options}
    with pytest.raises(ValueError, match=message):
        prunekit.prune(model, **kw)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_uneven_expert_cuts_are_refused_before_any_change():
    model = moe()
    graph = prunekit.trace(model)
    first = next(g for g in graph.groups if g.role == "expert_channels")
    before = state(model)
    with pytest.raises(prunekit.SurgeryError, match="same number"):
        prunekit.remove(model, [(first, list(range(8)))], shapes=graph.param_shapes)
    with pytest.raises(prunekit.SurgeryError, match="multiple of 8"):
        tied = [g for g in graph.groups if g.tie == first.tie]
        prunekit.remove(model, [(g, [0, 1, 2]) for g in tied], shapes=graph.param_shapes)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_hybrid_prunes_attention_ssm_heads_mlp_and_experts_in_one_call(tmp_path):
    """Granite-4 hybrid with experts: Mamba-2 and attention blocks, each with a shared MLP and experts."""
    model = moe("granitemoehybrid", num_local_experts=4, num_experts_per_tok=2)
    before = {n: tuple(p.shape) for n, p in model.named_parameters()}
    report = prunekit.prune(model, method="wanda-sp", sparsity=0.5, structure="structured", calibration=IDS)
    kinds = {role for row in report.units.values() for role, (n, kept) in row.items() if kept < n}
    assert kinds == {"attention", "ssm_heads", "mlp", "expert_channels"}, report.units
    shrunk = {n for n, p in model.named_parameters() if tuple(p.shape) != before[n]}
    for name in ("self_attn.q_proj.weight", "mamba.in_proj.weight", "shared_mlp.input_linear.weight",
                 "block_sparse_moe.experts.down_proj"):  # fmt: skip
        assert any(n.endswith(name) for n in shrunk), name
    kw = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=0)
    ids = IDS[:2, :6]
    mask = torch.ones_like(ids)
    cached = model.generate(ids, attention_mask=mask, use_cache=True, **kw)
    assert torch.equal(cached, model.generate(ids, attention_mask=mask, use_cache=False, **kw))
    again = prunekit.from_pretrained(prunekit.save_pretrained(model, tmp_path))
    with torch.no_grad():
        assert torch.equal(again(IDS).logits, model(IDS).logits)
