"""The trace and surgery on the real SmolLM2-135M (30 layers, hidden 576, 9 heads, 3 KV heads)."""

from __future__ import annotations

import copy

import pytest
import torch

import prunekit

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol_graph(smollm2):
    model, _tok = smollm2
    return prunekit.trace(model)


def test_trace_finds_the_expected_groups(smol_graph):
    mlp = smol_graph.by_role("mlp")
    attn = smol_graph.by_role("attention")
    residual = smol_graph.by_role("residual")
    assert len(mlp) == 30 and all(g.num_units == 1536 and g.kind == "channels" for g in mlp)
    assert len(attn) == 30
    for g in attn:
        assert (g.num_units, g.num_outer, g.units_per_outer, g.block_size) == (9, 3, 3, 64)
        assert {m.param.rsplit(".", 2)[-2] for m in g.members} == {"q_proj", "k_proj", "v_proj", "o_proj"}
        assert all(m.per_outer == (m.param.endswith(("k_proj.weight", "v_proj.weight"))) for m in g.members)
    assert len(residual) == 1 and residual[0].num_units == 576
    # tied lm_head/embedding, 61 norms and 30 x 7 projections all carry the residual stream
    assert len(residual[0].members) == 1 + 61 + 30 * 7
    assert {g.layer_index() for g in mlp} == set(range(30))
    assert str(mlp[3]) == "layers.3.mlp: gate_proj.out[1536] + up_proj.out[1536] → down_proj.in[1536]"
    assert str(attn[0]).startswith("layers.0.self_attn: 9 heads in 3 groups of 3 × 64")


def test_trace_is_seconds_not_minutes(smol_graph):
    assert smol_graph.seconds < 60


def test_structured_prune_shrinks_and_still_generates(smollm2):
    model, tok = smollm2
    model = copy.deepcopy(model)
    report = prunekit.prune(model, sparsity=0.34, structure="structured", gqa="heads")
    layer = model.model.layers[7]
    # int(9 * 0.34) = 3 query heads wherever they score lowest; a KV head goes only with all of its heads
    assert layer.self_attn.q_proj.out_features == 6 * 64
    sizes = layer.self_attn.prunekit_kv_group_sizes
    assert sum(sizes) == 6 and layer.self_attn.k_proj.out_features == len(sizes) * 64
    assert layer.mlp.gate_proj.out_features == 1536 - int(1536 * 0.34)
    assert model.config.intermediate_size == layer.mlp.gate_proj.out_features
    assert report.params_after < report.params_before
    ids = tok("The Python language", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 5
    assert torch.isfinite(model(ids).logits).all()


def test_magnitude_half_on_smollm2_is_exact_and_hurts_perplexity(smollm2):
    from prunekit.data import eval_windows
    from prunekit.eval import perplexity

    model, tok = smollm2
    windows = eval_windows(tok, seq_len=128, max_windows=4)
    dense_ppl = perplexity(model, windows)
    pruned = copy.deepcopy(model)
    report = prunekit.prune(pruned, method="magnitude", sparsity=0.5)
    assert len(report.masks) == 30 * 7
    for name in report.masks:
        w = pruned.get_parameter(name)
        assert int((w == 0).sum()) == w.numel() // 2, name
    # embeddings (tied with lm_head) are not targeted by default
    assert torch.equal(pruned.model.embed_tokens.weight, model.model.embed_tokens.weight)
    pruned_ppl = perplexity(pruned, windows)
    assert dense_ppl < pruned_ppl < float("inf")
