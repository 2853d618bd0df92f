"""Calibration-based unstructured pruning: Wanda, SparseGPT, GBLM, OWL and the block-wise engine."""

from __future__ import annotations

import copy
import gc

import pytest
import torch
from conftest import examples, make_byte_tokenizer, make_tiny_llama, make_tiny_mamba, make_tiny_mamba2
from hypothesis import given, settings
from hypothesis import strategies as st

import prunekit
from prunekit.engine.calibration import run_blockwise
from prunekit.engine.gradients import model_statistics
from prunekit.methods.allocation import owl_sparsities
from prunekit.methods.scorers import get_scorer
from prunekit.methods.select import NM, Selection
from prunekit.methods.statistics import GradientNorms, Hessian, ModuleStats, SquaredNorms

METHODS = ["magnitude", "wanda", "sparsegpt", "gblm"]


FAMILIES = {"llama": make_tiny_llama, "mamba": make_tiny_mamba, "mamba2": make_tiny_mamba2}


def _ids(n=6, length=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, 64, (n, length), generator=g)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same(model, snapshot):
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, snapshot[key], rtol=0, atol=0, equal_nan=True, msg=key)


# ---------------------------------------------------------------------------------------------- scorers
@settings(max_examples=examples(40), deadline=None)
@given(rows=st.integers(1, 5), cols=st.integers(1, 12), sparsity=st.floats(0, 0.95), data=st.data())
def test_wanda_prunes_lowest_weight_times_activation_norm_per_row(rows, cols, sparsity, data):
    w = torch.tensor(
        data.draw(st.lists(st.integers(-3, 3), min_size=rows * cols, max_size=rows * cols)),
        dtype=torch.float32,
    ).reshape(rows, cols)
    norms_sq = torch.tensor(
        data.draw(st.lists(st.sampled_from([0.0, 1.0, 4.0, 9.0]), min_size=cols, max_size=cols))
    )
    stats = ModuleStats({SquaredNorms: norms_sq.reshape(1, -1)}, n_samples=1)
    new, mask = get_scorer("wanda").prune_matrix(w, stats, Selection(sparsity, per_row=True))
    k = int(cols * sparsity)
    score = w.abs() * norms_sq.sqrt()
    for r in range(rows):
        expected = sorted(sorted(range(cols), key=lambda j: (float(score[r, j]), j))[:k])
        assert torch.nonzero(mask[r]).flatten().tolist() == expected
    assert torch.equal(new, w.masked_fill(mask, 0))


def test_wanda_nm_picks_n_lowest_scores_in_every_block():
    torch.manual_seed(0)
    w, norms = torch.randn(8, 16), torch.rand(16) * 4
    _new, mask = get_scorer("wanda").prune_matrix(
        w, ModuleStats({SquaredNorms: norms.reshape(1, -1)}, n_samples=1), Selection(0.0, NM(2, 4))
    )
    score = (w.abs() * norms.sqrt()).reshape(8, 4, 4)
    lowest = torch.argsort(score, dim=-1)[..., :2]
    expected = torch.zeros_like(score, dtype=torch.bool).scatter_(-1, lowest, True).reshape(8, 16)
    assert torch.equal(mask, expected)


def _hessian(x):
    return 2 * x.t() @ x / x.shape[0]


@pytest.mark.parametrize(
    "selection",
    [Selection(0.5), Selection(0.6, per_row=True), Selection(0.0, NM(2, 4)), Selection(0.0, NM(4, 8))],
)
def test_sparsegpt_beats_mask_only_reconstruction_with_the_same_mask(selection):
    torch.manual_seed(1)
    x = torch.randn(512, 64) @ torch.randn(64, 64) * 0.3  # correlated inputs, as in real layers
    w = torch.randn(24, 64)
    scorer = get_scorer("sparsegpt", blocksize=16)
    new, mask = scorer.prune_matrix(w, ModuleStats({Hessian: _hessian(x)}), selection)
    assert torch.equal(new == 0, mask | (new == 0)) and bool((new[mask] == 0).all())
    mask_only = w.masked_fill(mask, 0)
    err_update = ((w - new) @ x.t()).norm()
    err_mask = ((w - mask_only) @ x.t()).norm()
    assert err_update < err_mask
    # the requested sparsity is exact
    if selection.pattern is None and not selection.per_row:
        assert int(mask.sum()) == int(w.numel() * selection.sparsity)
    elif selection.per_row:
        assert bool((mask.sum(1) == int(64 * selection.sparsity)).all())
    else:
        m = selection.pattern.m
        assert bool((mask.reshape(24, -1, m).sum(-1) == selection.pattern.n).all())


def test_gradient_norms_match_per_sequence_autograd():
    model = make_tiny_llama(seed=2)
    ids = _ids(3, 10)
    weight = model.model.layers[0].mlp.down_proj.weight
    got = model_statistics(model, ids, {"down": weight}, {GradientNorms(scale=10.0)})["down"][GradientNorms]
    expected = torch.zeros_like(weight)
    for row in ids:
        model.zero_grad()
        model(input_ids=row[None], labels=row[None]).loss.backward()
        expected += (10.0 * weight.grad) ** 2
    model.zero_grad()
    torch.testing.assert_close(got, expected.sqrt(), rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------------------------------------- families
@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("structure", ["unstructured", "2:4"])
def test_every_scorer_keeps_the_requested_sparsity_on_every_family(family, method, structure):
    model = FAMILIES[family]()
    report = prunekit.prune(model, method=method, sparsity=0.5, structure=structure, calibration=_ids())
    assert report.masks
    for name, mask in report.masks.items():
        w = model.get_parameter(name)
        assert bool((w[mask] == 0).all()), name
        assert int(mask.sum()) == w.numel() // 2, name
        if structure == "2:4":
            assert bool((mask.reshape(w.shape[0], -1, 4).sum(-1) == 2).all()), name
    ids = torch.tensor([[3, 4, 5]])
    assert torch.isfinite(model(ids).logits).all()


def test_mamba_default_targets_are_the_four_projections_and_conv_is_opt_in():
    model = make_tiny_mamba()
    report = prunekit.prune(model, method="wanda", sparsity=0.5, calibration=_ids())
    names = {n.split("mixer.")[1] for n in report.masks}
    assert names == {"in_proj.weight", "x_proj.weight", "dt_proj.weight", "out_proj.weight"}
    model = make_tiny_mamba()
    report = prunekit.prune(model, method="wanda", sparsity=0.5, calibration=_ids(), targets=["re:conv1d$"])
    assert sorted(report.masks) == [f"backbone.layers.{i}.mixer.conv1d.weight" for i in range(2)]


# ---------------------------------------------------------------------------------------------- OWL
@settings(max_examples=examples(60), deadline=None)
@given(
    ratios=st.lists(st.floats(0, 0.2), min_size=2, max_size=12),
    target=st.floats(0.1, 0.85),
    lam=st.floats(0.0, 0.1),
    data=st.data(),
)
def test_owl_allocation_is_bounded_and_hits_the_weighted_mean(ratios, target, lam, data):
    sizes = data.draw(st.lists(st.integers(1, 1000), min_size=len(ratios), max_size=len(ratios)))
    alloc = owl_sparsities(ratios, sizes, target, lam)
    assert all(target - lam - 1e-9 <= s <= target + lam + 1e-9 for s in alloc)
    mean = sum(s * n for s, n in zip(alloc, sizes)) / sum(sizes)
    assert mean == pytest.approx(target, abs=1e-6)
    # more outliers never means more pruning
    order = sorted(range(len(ratios)), key=lambda i: ratios[i])
    assert all(alloc[a] >= alloc[b] - 1e-9 for a, b in zip(order, order[1:]))


def test_owl_prune_meets_the_mean_over_targeted_weights():
    model = make_tiny_llama(seed=4)
    report = prunekit.prune(
        model,
        method="wanda",
        sparsity=0.6,
        calibration=_ids(),
        allocation="owl",
        owl_lambda=0.1,
        granularity="matrix",
    )
    per_block = report.block_sparsity
    assert set(per_block) == {0, 1}
    assert all(0.5 - 1e-9 <= s <= 0.7 + 1e-9 for s in per_block.values())
    total = sum(m.numel() for m in report.masks.values())
    pruned = sum(int(m.sum()) for m in report.masks.values())
    assert pruned / total == pytest.approx(0.6, abs=len(report.masks) / total)


# ---------------------------------------------------------------------------------------------- engine
def _live_activation_count(shape):
    return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor) and tuple(o.shape) == shape)


@pytest.mark.parametrize("mode", ["sequential", "dense"])
def test_engine_holds_one_block_of_activations_whatever_the_depth(mode):
    from transformers import LlamaConfig, LlamaForCausalLM

    peaks = {}
    for layers in (2, 6):
        torch.manual_seed(0)
        cfg = LlamaConfig(
            vocab_size=64,
            hidden_size=24,
            intermediate_size=40,
            num_hidden_layers=layers,
            num_attention_heads=3,
            num_key_value_heads=1,
        )
        model = LlamaForCausalLM(cfg).eval()
        blocks = list(model.model.layers)
        ids = _ids(4, 9)
        seen, counts = [], []
        calls = {i: 0 for i in range(layers)}
        for i, b in enumerate(blocks):
            b.register_forward_hook(lambda *_a, i=i, calls=calls: calls.__setitem__(i, calls[i] + 1))

        def on_block(index, block, stats, seen=seen, counts=counts, calls=calls):
            # blocks run strictly in order: later ones have at most seen the (identity) recording pass
            assert all(calls[j] <= 1 for j in calls if j > index)
            seen.append(index)
            counts.append(_live_activation_count((2, 9, 24)))

        run_blockwise(
            model, blocks, ids, [{} for _ in blocks], frozenset(), on_block, mode=mode, batch_size=2
        )
        assert seen == list(range(layers))
        per_block_calls = 2 * 2 if mode == "sequential" else 2
        # the block-wise passes, plus at most the recording pass (which replaces blocks by identities)
        assert all(calls[i] - per_block_calls in (0, 1) for i in range(layers))
        peaks[layers] = max(counts)
    assert peaks[6] == peaks[2]


def test_sequential_and_dense_calibration_differ_after_the_first_block():
    dense_model, seq_model = make_tiny_llama(seed=5), make_tiny_llama(seed=5)
    prunekit.prune(dense_model, method="wanda", sparsity=0.5, calibration=_ids(), calibration_mode="dense")
    prunekit.prune(seq_model, method="wanda", sparsity=0.5, calibration=_ids(), calibration_mode="sequential")
    first = "model.layers.0.mlp.down_proj.weight"
    assert torch.equal(dense_model.get_parameter(first) == 0, seq_model.get_parameter(first) == 0)
    masks_differ = any(
        not torch.equal(dense_model.get_parameter(n) == 0, seq_model.get_parameter(n) == 0)
        for n, _ in seq_model.named_parameters()
        if ".layers.1." in n and n.endswith("proj.weight")
    )
    assert masks_differ


# ---------------------------------------------------------------------------------------------- inputs
def test_calibration_from_texts_and_dataset_match_token_ids():
    tok = make_byte_tokenizer()
    model = make_tiny_llama(seed=6)
    model.resize_token_embeddings(300)
    texts = ["Pruning keeps the weights that matter. " * 20, "Second document about channels. " * 20]
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    ra = prunekit.prune(
        a, method="wanda", sparsity=0.5, calibration=texts, tokenizer=tok, n_samples=4, seq_len=32
    )
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"body": texts})
    rb = prunekit.prune(
        b,
        method="wanda",
        sparsity=0.5,
        calibration=ds,
        tokenizer=tok,
        n_samples=4,
        seq_len=32,
        text_column="body",
    )
    for name in ra.masks:
        assert torch.equal(ra.masks[name], rb.masks[name])


BAD = [
    ({"method": "wanda"}, ValueError, "needs calibration"),
    (
        {"method": "wanda", "calibration": ["too short"], "tokenizer": make_byte_tokenizer(), "seq_len": 64},
        ValueError,
        "fewer than one window",
    ),
    ({"method": "wanda", "calibration": ["some text " * 50]}, ValueError, "tokenizer"),
    ({"method": "sparsegpt", "structure": "4:4", "calibration": _ids()}, ValueError, "N:M"),
    (
        {"method": "wanda", "calibration": _ids(), "targets": ["re:nothing_like_this"]},
        ValueError,
        "matches nothing",
    ),
    ({"method": "wanda", "calibration": _ids(), "targets": ["lm_head"]}, ValueError, "outside the blocks"),
    ({"method": "sparsegpt", "calibration": _ids(), "blocksize": 0.5, "nonsense": 1}, ValueError, "nonsense"),
    ({"method": "wanda", "calibration": _ids(), "allocation": "random"}, ValueError, "allocation"),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD)
def test_bad_calibrated_calls_leave_the_model_unchanged(kwargs, error, message):
    model = make_tiny_llama(seed=7)
    if "tokenizer" in kwargs or isinstance(kwargs.get("calibration"), list):
        model.resize_token_embeddings(300)
    snapshot = _state(model)
    with pytest.raises(error, match=message):
        prunekit.prune(model, sparsity=0.5, **kwargs)
    _assert_same(model, snapshot)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "gblm"])
def test_nan_activations_raise_and_restore_already_pruned_blocks(method):
    model = make_tiny_llama(seed=8)
    with torch.no_grad():
        model.model.layers[1].input_layernorm.weight[3] = float(
            "nan"
        )  # block 0 is pruned before block 1 sees it
    snapshot = _state(model)
    with pytest.raises(ValueError, match="non-finite"):
        prunekit.prune(model, method=method, sparsity=0.5, calibration=_ids())
    _assert_same(model, snapshot)
