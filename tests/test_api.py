"""prunekit.prune on small random models: exact sparsity patterns, structured shrinking, bad inputs."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import examples, make_tiny_llama
from hypothesis import given, settings
from hypothesis import strategies as st

import prunekit
from prunekit.methods.select import nm_mask, unstructured_mask


def _linear_weights(model) -> dict[str, torch.Tensor]:
    return {
        name: mod.weight
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear) and ".layers." in name
    }


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model, snapshot) -> None:
    state = model.state_dict()
    assert state.keys() == snapshot.keys()
    for key, value in snapshot.items():
        assert state[key].shape == value.shape and torch.equal(state[key], value), key


@pytest.fixture
def tiny():
    return make_tiny_llama(seed=3)


def test_magnitude_half_leaves_exactly_half_zeros_per_matrix(tiny):
    dense = copy.deepcopy(tiny)
    report = prunekit.prune(tiny, method="magnitude", sparsity=0.5)
    for name, w in _linear_weights(tiny).items():
        assert int((w == 0).sum()) == w.numel() // 2, name
        # the survivors are exactly the largest-magnitude half
        original = dict(dense.named_modules())[name].weight
        kept = original.abs()[w != 0]
        dropped = original.abs()[w == 0]
        assert kept.min() >= dropped.max()
        assert torch.equal(w[w != 0], original[w != 0])
    assert report.achieved == pytest.approx(0.5)
    assert set(report.masks) == {f"{n}.weight" for n in _linear_weights(tiny)}
    for name, mask in report.masks.items():
        assert torch.equal(mask, tiny.get_parameter(name) == 0)


def test_magnitude_per_row_leaves_exactly_half_zeros_in_every_row(tiny):
    prunekit.prune(tiny, method="magnitude", sparsity=0.5, granularity="row")
    for name, w in _linear_weights(tiny).items():
        assert torch.equal((w == 0).sum(dim=1), torch.full((w.shape[0],), w.shape[1] // 2)), name


def test_two_four_leaves_two_zeros_in_every_block_of_four(tiny):
    report = prunekit.prune(tiny, method="magnitude", structure="2:4")
    assert report.sparsity == 0.5  # N:M fixes the sparsity
    for name, w in _linear_weights(tiny).items():
        blocks = (w == 0).reshape(w.shape[0], -1, 4).sum(-1)
        assert bool((blocks == 2).all()), name


def test_a_sparsity_that_contradicts_the_nm_pattern_is_refused(tiny):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    with pytest.raises(ValueError, match="1:4 fixes the sparsity at 0.25, got 0.5"):
        prunekit.prune(tiny, method="magnitude", sparsity=0.5, structure="1:4")
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())


@settings(max_examples=examples(40), deadline=None)
@given(
    rows=st.integers(1, 6),
    blocks=st.integers(1, 6),
    n_m=st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 4), (4, 8), (2, 8)]),
    data=st.data(),
)
def test_nm_mask_prunes_the_n_lowest_of_every_block(rows, blocks, n_m, data):
    n, m = n_m
    values = data.draw(st.lists(st.integers(-3, 3), min_size=rows * blocks * m, max_size=rows * blocks * m))
    scores = torch.tensor(values, dtype=torch.float32).reshape(rows, blocks * m)
    mask = nm_mask(scores, prunekit.methods.select.NM(n, m))
    grid_s = scores.reshape(rows, blocks, m)
    grid_m = mask.reshape(rows, blocks, m)
    assert bool((grid_m.sum(-1) == n).all())
    for r in range(rows):
        for b in range(blocks):
            s, k = grid_s[r, b].tolist(), grid_m[r, b].tolist()
            expected = sorted(range(m), key=lambda i: (s[i], i))[:n]  # lowest, ties by index
            assert [i for i in range(m) if k[i]] == sorted(expected)


@settings(max_examples=examples(40), deadline=None)
@given(
    shape=st.tuples(st.integers(1, 7), st.integers(1, 9)),
    sparsity=st.floats(0, 0.99),
    per_row=st.booleans(),
    data=st.data(),
)
def test_unstructured_mask_is_exact_lowest_with_index_ties(shape, sparsity, per_row, data):
    n = shape[0] * shape[1]
    values = data.draw(st.lists(st.integers(-2, 2), min_size=n, max_size=n))
    scores = torch.tensor(values, dtype=torch.float32).reshape(shape)
    mask = unstructured_mask(scores, sparsity, per_row=per_row)
    groups = (
        [(scores[r], mask[r]) for r in range(shape[0])] if per_row else [(scores.flatten(), mask.flatten())]
    )
    for s, k in groups:
        count = int(len(s) * sparsity)
        expected = sorted(range(len(s)), key=lambda i: (float(s[i]), i))[:count]
        assert torch.nonzero(k).flatten().tolist() == sorted(expected)


def test_structured_magnitude_removes_lowest_norm_mlp_channels(tiny):
    dense = copy.deepcopy(tiny)
    report = prunekit.prune(tiny, method="magnitude", sparsity=0.25, structure="structured", targets=["mlp"])
    for i, layer in enumerate(dense.model.layers):
        mlp = layer.mlp
        norms = (
            mlp.gate_proj.weight.pow(2).sum(1)
            + mlp.up_proj.weight.pow(2).sum(1)
            + mlp.down_proj.weight.pow(2).sum(0)
        )
        expected = torch.sort(torch.argsort(norms, stable=True)[: round(48 * 0.25)]).values
        assert report.removed[f"layers.{i}.mlp (mlp)"] == expected.tolist()
        pruned = tiny.model.layers[i].mlp
        keep = torch.ones(48, dtype=torch.bool)
        keep[expected] = False
        assert torch.equal(pruned.gate_proj.weight, mlp.gate_proj.weight[keep])
        assert torch.equal(pruned.down_proj.weight, mlp.down_proj.weight[:, keep])
    assert tiny.config.intermediate_size == 36
    assert report.params_after < report.params_before
    tiny(torch.randint(0, 64, (1, 6)))


@pytest.mark.parametrize("policy", ["heads", "groups"])
def test_structured_gqa_policies(tiny, policy):
    prunekit.prune(tiny, sparsity=0.5, structure="structured", targets=["attention"], gqa=policy)
    for layer in tiny.model.layers:
        attn = layer.self_attn
        n_q, n_kv = attn.q_proj.out_features // 8, attn.k_proj.out_features // 8
        assert (n_q, n_kv) == ((2, 2) if policy == "heads" else (2, 1))
        assert attn.num_key_value_groups == n_q // n_kv
    out = tiny.generate(torch.tensor([[3, 5, 7]]), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 6)


def test_structured_soft_mode_keeps_shapes(tiny):
    shapes = {k: v.shape for k, v in tiny.state_dict().items()}
    prunekit.prune(tiny, sparsity=0.5, structure="structured", mode="soft")
    assert {k: v.shape for k, v in tiny.state_dict().items()} == shapes
    down = tiny.model.layers[0].mlp.down_proj.weight
    assert int((down == 0).all(dim=0).sum()) == 24


def test_report_table_lists_every_layer(tiny):
    report = prunekit.prune(tiny, sparsity=0.5)
    text = str(report)
    assert "layers.0" in text and "layers.1" in text and "total" in text
    assert [r.name for r in report.rows] == ["layers.0", "layers.1", "(other)"]
    assert report.to_dict()["layers"][0]["sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_targets_and_ignore_patterns(tiny):
    report = prunekit.prune(
        tiny, sparsity=0.5, targets=["re:mlp\\.(up|down)_proj"], ignore=["layers.1.mlp.up_proj"]
    )
    assert sorted(report.masks) == [
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
    ]
    assert int((tiny.model.layers[0].self_attn.q_proj.weight == 0).sum()) == 0


BAD_CALLS = [
    ({"sparsity": 1.0}, ValueError, "sparsity"),
    ({"sparsity": -0.1}, ValueError, "sparsity"),
    ({"sparsity": "0.5"}, TypeError, "sparsity"),
    ({"method": "nonexistent"}, ValueError, "unknown method"),
    ({"structure": "3:3"}, ValueError, "N:M"),
    ({"structure": "2:5"}, ValueError, "multiple of 5"),
    ({"structure": "blocky"}, ValueError, "structure"),
    ({"calibration": torch.zeros(2, 8)}, TypeError, "int64"),
    ({"calibration": torch.zeros(8, dtype=torch.long)}, ValueError, "shape"),
    ({"calibration": torch.full((2, 8), 999, dtype=torch.long)}, ValueError, "vocabulary"),
    ({"calibration": [[1, 2, 3]]}, TypeError, "LongTensor"),
    ({"targets": ["no_such_module"]}, ValueError, "matches nothing"),
    ({"ignore": ["re:("]}, ValueError, "regular expression"),
    ({"granularity": "column"}, ValueError, "granularity"),
    ({"bogus_option": 1}, ValueError, "bogus_option"),
    ({"structure": "structured", "targets": ["no_such_role"]}, ValueError, "matches nothing"),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD_CALLS)
def test_bad_input_raises_and_leaves_model_bit_identical(tiny, kwargs, error, message):
    snapshot = _snapshot(tiny)
    with pytest.raises(error, match=message):
        prunekit.prune(tiny, **kwargs)
    _assert_unchanged(tiny, snapshot)


class _FourierMix(torch.nn.Module):
    """An activation whose FFT over channels has no propagation rule in the tracer."""

    def forward(self, x):
        return torch.nn.functional.silu(x) + 0 * torch.fft.fft(x, dim=-1).real


def test_unmappable_op_names_op_and_module_and_leaves_model_unchanged(tiny):
    tiny.model.layers[1].mlp.act_fn = _FourierMix()
    snapshot = _snapshot(tiny)
    with pytest.raises(prunekit.UnmappedOpError, match=r"aten\.fft_fft.*model\.layers\.1\.mlp\.act_fn"):
        prunekit.prune(tiny, sparsity=0.3, structure="structured")
    _assert_unchanged(tiny, snapshot)


def test_adapter_can_declare_an_opaque_module(tiny):
    from prunekit.families.llama import LlamaAdapter

    class FourierLlama(LlamaAdapter):
        opaque_modules = {"*.layers.1.mlp.act_fn": "an FFT mixer: channels cannot be tracked through it"}

    tiny.model.layers[1].mlp.act_fn = _FourierMix()
    graph = prunekit.trace(tiny, adapter=FourierLlama())
    roles = [(g.name, g.role) for g in graph.groups]
    assert ("model.layers.0.mlp", "mlp") in roles
    assert ("model.layers.1.mlp", "mlp") not in roles
    assert any("FFT" in why for g, why in graph.rejected if g.name.startswith("model.layers.1.mlp"))
