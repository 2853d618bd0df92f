"""BESA: learned row sparsities (masks, exact targets), block-wise reconstruction on every kind of block."""

from __future__ import annotations

import copy
import importlib.machinery
import sys
import types

import pytest
import torch
from conftest import examples, make_tiny_llama, make_tiny_mamba, make_tiny_mamba2
from hypothesis import given, settings
from hypothesis import strategies as st

import prunekit
from prunekit.methods.besa import RowSparsity, candidates, exact_counts, ranks, smooth_range

FAST = {"lr": 0.05, "epochs": 3}


def _row_sparsity(rows, cols, step, row_block, seed, smooth=True):
    gen = torch.Generator().manual_seed(seed)
    r = RowSparsity(ranks(torch.rand(rows, cols, generator=gen)), step, row_block, smooth)
    with torch.no_grad():
        r.logits.copy_(torch.randn(r.logits.shape, generator=gen) * 3)
    return r


@settings(max_examples=examples(40), deadline=None)
@given(
    rows=st.integers(1, 6), cols=st.integers(1, 40), step=st.sampled_from([0.01, 0.05, 0.1, 0.25, 0.5, 1.0]),
    row_block=st.sampled_from([1, 2, 3]), seed=st.integers(0, 2**16), smooth=st.booleans(),
)  # fmt: skip
def test_straight_through_mask_is_the_hard_mask_and_has_the_soft_gradient(
    rows, cols, step, row_block, seed, smooth
):
    rows *= row_block
    r = _row_sparsity(rows, cols, step, row_block, seed, smooth)
    mask = r.mask()
    hard = r.hard_mask()
    assert torch.equal(mask, hard)
    counts = torch.floor(r.row_sparsities().detach() * cols + 1e-6).long()
    assert torch.equal((hard == 0).sum(1), counts)  # the lowest-ranked ones go
    assert torch.equal(hard == 0, r.rank < counts.unsqueeze(1))
    weights = torch.rand(rows, cols)
    (g_mask,) = torch.autograd.grad((mask * weights).sum(), r.logits)
    (g_soft,) = torch.autograd.grad((r.soft_mask() * weights).sum(), r.logits)
    assert torch.allclose(g_mask, g_soft)


@settings(max_examples=examples(40), deadline=None)
@given(
    rows=st.integers(1, 5), per_step=st.integers(1, 4), step=st.sampled_from([0.01, 0.05, 0.1, 0.2, 0.5]),
    seed=st.integers(0, 2**16), smooth=st.booleans(),
)  # fmt: skip
def test_soft_mask_expected_sparsity_is_p_dot_candidates(rows, per_step, step, seed, smooth):
    cols = per_step * round(1 / step)  # every candidate prunes a whole number of weights
    r = _row_sparsity(rows, cols, step, 1, seed, smooth)
    pruned_share = 1 - r.soft_mask().mean(dim=1)
    assert torch.allclose(pruned_share, r.probabilities() @ candidates(step).float(), atol=1e-5)


@settings(max_examples=examples(60), deadline=None)
@given(
    shapes=st.lists(st.tuples(st.integers(1, 8), st.integers(1, 30)), min_size=1, max_size=4),
    target=st.floats(0.0, 0.99), seed=st.integers(0, 2**16),
)  # fmt: skip
def test_exact_counts_meet_the_target_to_the_weight(shapes, target, seed):
    gen = torch.Generator().manual_seed(seed)
    sparsities = [torch.rand(rows, generator=gen) for rows, _ in shapes]
    counts = exact_counts(sparsities, [c for _, c in shapes], target)
    total = sum(rows * cols for rows, cols in shapes)
    assert int(sum(c.sum() for c in counts)) == int(target * total + 1e-9)
    for c, (rows, cols) in zip(counts, shapes):
        assert c.shape == (rows,) and int(c.min()) >= 0 and int(c.max()) <= cols


def test_exact_counts_keep_the_learned_order():
    low, high = torch.full((4,), 0.2), torch.full((4,), 0.7)
    low_c, high_c = exact_counts([low, high], [100, 100], 0.5)
    assert int(high_c.min()) > int(low_c.max())


def _calibration(vocab=64, n=8, length=24, seed=0):
    return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


def _block_zeros(model, report):
    out = {}
    for name, mask in report.masks.items():
        block = name.split(".layers.")[1].split(".")[0]
        total, zeros = out.get(block, (0, 0))
        out[block] = (total + mask.numel(), zeros + int(mask.sum()))
        assert torch.equal(model.get_parameter(name) == 0, mask) or bool(
            (model.get_parameter(name)[mask] == 0).all()
        )
    return out


@pytest.mark.parametrize(
    "make", [make_tiny_llama, make_tiny_mamba, make_tiny_mamba2], ids=["llama", "mamba", "mamba2"]
)
@pytest.mark.parametrize("sparsity, smooth", [(0.4, True), (0.55, True), (0.3, False), (0.7, False)])
def test_every_block_meets_its_target_within_one_weight(make, sparsity, smooth):
    model = make()
    report = prunekit.prune(
        model, method="besa", sparsity=sparsity, calibration=_calibration(), smooth=smooth, **FAST
    )
    blocks = _block_zeros(model, report)
    assert len(blocks) == 2
    for total, zeros in blocks.values():
        assert zeros == int(sparsity * total + 1e-9)
    assert set(report.block_sparsity.values()) == {sparsity}
    assert set(report.errors) == {
        f"{n}" for n, _ in model.named_modules() if n.endswith(("layers.0", "layers.1"))
    }


def _uneven_llama():
    """A Llama whose MLP channels 0-23 are 20x stronger than the others: uneven importance by row."""
    model = make_tiny_llama(1)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight[:, :24] *= 20
            layer.mlp.gate_proj.weight[:24] *= 3
            layer.mlp.up_proj.weight[:24] *= 3
    return model


def test_rows_get_different_sparsities_where_importance_is_uneven():
    model = _uneven_llama()
    report = prunekit.prune(model, method="besa", sparsity=0.5, calibration=_calibration(), lr=0.2, epochs=4)
    mask = report.masks["model.layers.0.mlp.up_proj.weight"].float()
    per_row = mask.mean(dim=1)
    assert len(set(per_row.tolist())) > 3
    assert float(per_row[:24].mean()) < float(per_row[24:].mean())  # the strong channels keep more
    layers = {n: float(m.float().mean()) for n, m in report.masks.items() if ".layers.0." in n}
    assert max(layers.values()) - min(layers.values()) > 0.02  # and matrices differ too


def _block_error(block, inputs, targets, kwargs_for):
    num = den = 0.0
    with torch.no_grad():
        for x, y in zip(inputs, targets):
            out = block(x, **kwargs_for(x))
            out = out[0] if isinstance(out, tuple) else out
            num += float(((out - y) ** 2).sum())
            den += float((y**2).sum())
    return num / den


def _first_block_io(model, ids):
    """The first block's inputs and the keyword arguments the model passes it."""
    seen = {}

    def hook(_m, args, kwargs):
        seen["x"], seen["kwargs"] = args[0].detach(), kwargs
        raise StopIteration

    h = model.model.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(input_ids=ids, use_cache=False)
    except StopIteration:
        pass
    finally:
        h.remove()
    return seen["x"], seen["kwargs"]


@pytest.mark.parametrize("seed", [0, 1])
def test_besa_block_error_is_below_wandas_at_the_same_sparsity(seed):
    dense = make_tiny_llama(seed)
    dense.config.num_hidden_layers = 1
    dense.model.layers = dense.model.layers[:1]
    ids = _calibration(seed=seed)
    x, kwargs = _first_block_io(dense, ids)
    with torch.no_grad():
        y = dense.model.layers[0](x, **kwargs)
        y = y[0] if isinstance(y, tuple) else y
    errors = {}
    for method, extra in [("wanda", {}), ("besa", {"lr": 0.05, "epochs": 4})]:
        model = copy.deepcopy(dense)
        report = prunekit.prune(model, method=method, sparsity=0.5, calibration=ids, **extra)
        assert abs(report.achieved - 0.5) < 1e-3
        errors[method] = _block_error(model.model.layers[0], [x], [y], lambda _x: kwargs)
    assert errors["besa"] < errors["wanda"]
    assert report.errors["model.layers.0"] == pytest.approx(errors["besa"], rel=1e-4)


@pytest.mark.parametrize("make", [make_tiny_mamba, make_tiny_mamba2], ids=["mamba", "mamba2"])
def test_ssm_block_error_is_below_wandas(make):
    dense = make(0)
    dense.config.num_hidden_layers = 1
    dense.backbone.layers = dense.backbone.layers[:1]
    ids = _calibration(seed=3)
    seen = {}
    h = dense.backbone.layers[0].register_forward_pre_hook(lambda _m, a: seen.setdefault("x", a[0].detach()))
    with torch.no_grad():
        dense(input_ids=ids, use_cache=False)
    h.remove()
    with torch.no_grad():
        y = dense.backbone.layers[0](seen["x"])
    errors = {}
    for method, extra in [("wanda", {}), ("besa", {"lr": 0.05, "epochs": 4})]:
        model = copy.deepcopy(dense)
        prunekit.prune(model, method=method, sparsity=0.5, calibration=ids, **extra)
        errors[method] = _block_error(model.backbone.layers[0], [seen["x"]], [y], lambda _x: {})
    assert errors["besa"] < errors["wanda"]


def test_model_parameters_keep_requires_grad_and_get_no_grad():
    model = make_tiny_llama()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    prunekit.prune(model, method="besa", sparsity=0.5, calibration=_calibration(), epochs=1)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())


def test_dense_reference_changes_only_what_follows_the_first_block():
    ids = _calibration()
    masks = {}
    for reference in ("pruned", "dense"):
        model = make_tiny_llama(2)
        masks[reference] = prunekit.prune(
            model, method="besa", sparsity=0.5, calibration=ids, reference=reference, lr=0.1, epochs=2
        ).masks
    first = [n for n in masks["pruned"] if ".layers.0." in n]
    second = [n for n in masks["pruned"] if ".layers.1." in n]
    assert all(torch.equal(masks["pruned"][n], masks["dense"][n]) for n in first)  # same inputs and targets
    assert any(not torch.equal(masks["pruned"][n], masks["dense"][n]) for n in second)


def test_owl_sets_block_targets_and_rows_are_learned_inside():
    model = make_tiny_llama(3)
    report = prunekit.prune(
        model,
        method="besa",
        sparsity=0.5,
        calibration=_calibration(),
        allocation="owl",
        owl_lambda=0.1,
        epochs=1,
    )
    assert len(set(report.block_sparsity.values())) == 2
    for block, (total, zeros) in _block_zeros(model, report).items():
        assert zeros == int(report.block_sparsity[int(block)] * total + 1e-9)


def test_lora_update_is_merged_under_the_mask():
    dense = make_tiny_llama(4)
    model = copy.deepcopy(dense)
    report = prunekit.prune(
        model, method="besa", sparsity=0.5, calibration=_calibration(), lora_rank=2, lr=0.05
    )
    name = "model.layers.0.mlp.up_proj.weight"
    new, old, mask = model.get_parameter(name), dense.get_parameter(name), report.masks[name]
    assert bool((new[mask] == 0).all())
    assert not torch.allclose(new[~mask], old[~mask])  # the adapter moved the kept weights
    assert int(mask.sum()) == int(0.5 * mask.numel())


def test_experts_are_pruned_per_expert_with_exact_block_targets():
    from family_configs import build

    model = build("mixtral")
    ids = _calibration(vocab=model.config.vocab_size)
    report = prunekit.prune(model, method="besa", sparsity=0.5, calibration=ids, epochs=1)
    assert any("experts" in n for n in report.masks)
    for total, zeros in _block_zeros(model, report).values():
        assert zeros == int(0.5 * total + 1e-9)


def _unchanged_after(model, error, **options):
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    with pytest.raises(error) as info:
        prunekit.prune(model, method="besa", calibration=_calibration(), **options)
    after = model.state_dict()
    assert all(torch.equal(before[n], after[n]) for n in before)
    return str(info.value)


@pytest.mark.parametrize(
    "options, words",
    [
        ({"sparsity": 0.5, "step": 0.03}, "divide 1"),
        ({"sparsity": 0.5, "beta": -1.0}, "beta"),
        ({"sparsity": 0.5, "importance": "flap"}, "importance"),
        ({"sparsity": 0.5, "optimizer": "sgd"}, "optimizer"),
        ({"sparsity": 0.5, "reference": "teacher"}, "reference"),
        ({"sparsity": 0.5, "epochs": 0}, "epochs"),
        ({"sparsity": 0.5, "granularity": "matrix"}, "granularity"),
        ({"sparsity": 0.5, "structure": "2:4"}, "structure"),
        ({"sparsity": 0.5, "row_block": 5}, "row_block=5 does not divide"),
        ({"sparsity": 0.85}, "smooth=False"),
        ({"sparsity": 0.5, "spread": 0.0}, "spread"),
        ({"sparsity": 0.5, "lora_lr": 1e-3}, "lora_rank"),
        ({"sparsity": 0.5, "spread": 2.0, "smooth": False}, "smooth=True"),
    ],
)  # fmt: skip
def test_bad_options_are_named_and_leave_the_model_unchanged(options, words):
    message = _unchanged_after(make_tiny_llama(), ValueError, **options)
    assert words in message


def test_failure_half_way_restores_every_weight(monkeypatch):
    from prunekit.engine import besa as engine_besa

    model = make_tiny_llama()
    calls = {"n": 0}
    real = engine_besa._BlockTrainer._write

    def fail_second(self, *args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk full")
        return real(self, *args)

    monkeypatch.setattr(engine_besa._BlockTrainer, "_write", fail_second)
    assert "disk full" in _unchanged_after(model, RuntimeError, sparsity=0.5, epochs=1)


def test_prodigy_is_the_optional_package_at_its_own_learning_rate(monkeypatch):
    made = {}

    class Prodigy(torch.optim.AdamW):
        def __init__(self, params, lr, **kwargs):
            made["lr"] = lr
            super().__init__(params, lr=1e-3, **kwargs)

    fake = types.ModuleType("prodigyopt")
    fake.Prodigy = Prodigy
    fake.__spec__ = importlib.machinery.ModuleSpec("prodigyopt", None)
    monkeypatch.setitem(sys.modules, "prodigyopt", fake)
    model = make_tiny_llama()
    prunekit.prune(
        model, method="besa", sparsity=0.5, calibration=_calibration(), optimizer="prodigy", epochs=1
    )
    assert made["lr"] == 1.0


def test_prodigy_without_the_package_is_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "prodigyopt", None)
    with pytest.raises(ValueError, match="prodigyopt"):
        prunekit.prune(
            make_tiny_llama(), method="besa", sparsity=0.5, calibration=_calibration(), optimizer="prodigy"
        )


def test_smooth_range_brackets_one_half_and_widens_with_spread():
    ranges = [smooth_range(0.01, spread) for spread in (1.0, 2.0, 4.0)]
    for lo, hi in ranges:
        assert 0 < lo < 0.5 < hi < 1 and abs((lo + hi) - 1) < 1e-9
    assert ranges[0][1] < ranges[1][1] < ranges[2][1]


@pytest.mark.parametrize("spread", [1.0, 2.0])
def test_rows_stay_inside_the_smooth_range(spread):
    r = _row_sparsity(6, 50, 0.01, 1, 0, smooth=True)
    r.spread = spread
    with torch.no_grad():
        r.logits.copy_(torch.linspace(40, -40, r.logits.shape[1]).expand_as(r.logits))  # all on 1.0
    lo, hi = smooth_range(0.01, spread)
    assert float(r.row_sparsities().detach().max()) <= hi + 1e-6
    with torch.no_grad():
        r.logits.neg_()
    assert float(r.row_sparsities().detach().min()) >= lo - 1e-6


def test_a_wider_spread_reaches_targets_the_reference_range_refuses():
    model = make_tiny_llama()
    report = prunekit.prune(
        model, method="besa", sparsity=0.7, calibration=_calibration(), spread=2.0, epochs=1
    )
    assert report.achieved == pytest.approx(0.7, abs=1e-3)


def test_report_shows_layer_sparsities():
    model = make_tiny_llama()
    report = prunekit.prune(model, method="besa", sparsity=0.5, calibration=_calibration(), epochs=1)
    layers = report.layer_sparsity
    assert set(layers) == set(report.masks)
    for name, value in layers.items():
        assert value == pytest.approx(float((model.get_parameter(name) == 0).float().mean()), abs=1e-6)


@pytest.mark.parametrize("family", ["gpt2", "bamba", "granitemoehybrid", "jamba", "qwen2_moe", "falcon_h1"])
def test_other_families_meet_the_target_block_by_block(family):
    """Conv1D (GPT-2), attention + Mamba-2 hybrids, MoE with shared experts, Jamba's Mamba + experts."""
    from family_configs import build

    model = build(family)
    ids = _calibration(vocab=model.config.vocab_size, n=4, length=16)
    report = prunekit.prune(model, method="besa", sparsity=0.5, calibration=ids, epochs=1)
    per_block: dict[int, list[int]] = {}
    for name, mask in report.masks.items():
        block = int(name.split(".h.")[-1].split(".layers.")[-1].split(".")[0])
        tally = per_block.setdefault(block, [0, 0])
        tally[0] += mask.numel()
        tally[1] += int(mask.sum())
        assert bool((model.get_parameter(name)[mask] == 0).all())
    assert per_block and all(zeros == int(0.5 * total + 1e-9) for total, zeros in per_block.values())
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids[:1], use_cache=False).logits).all()


@pytest.mark.parametrize("arch", ["llama", "mamba2"])
def test_offloaded_besa_equals_in_memory(tmp_path, arch):
    from transformers import AutoModelForCausalLM

    from prunekit import prune_offloaded
    from prunekit.io.load import load_masks
    from prunekit.refmodels.configs import reference_config

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(reference_config(arch, 300, "micro")).eval()
    model.save_pretrained(tmp_path / "src")
    ids = torch.randint(3, 300, (4, 16), generator=torch.Generator().manual_seed(0))
    in_memory = copy.deepcopy(model)
    report = prunekit.prune(in_memory, method="besa", sparsity=0.5, calibration=ids, lr=0.1)
    prune_offloaded(tmp_path / "src", tmp_path / "out", "besa", 0.5, calibration=ids, device="cpu", lr=0.1)
    masks = load_masks(tmp_path / "out")
    assert masks.keys() == report.masks.keys()
    assert all(torch.equal(masks[k], report.masks[k]) for k in masks)
    want = in_memory.state_dict()
    reloaded = prunekit.from_pretrained(tmp_path / "out")
    assert all(torch.equal(v, want[k]) for k, v in reloaded.state_dict().items())


def test_zero_sparsity_changes_nothing_and_reports_empty_masks():
    model = make_tiny_llama()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = prunekit.prune(model, method="besa", sparsity=0.0, calibration=_calibration())
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert report.masks and not any(bool(m.any()) for m in report.masks.values())


def test_layer_figure_groups_matrices_by_kind_and_block():
    from prunekit.experiments.layer_plot import by_kind

    shares = {
        "model.layers.0.self_attn.q_proj.weight": 0.4,
        "model.layers.1.self_attn.q_proj.weight": 0.6,
        "model.layers.1.mlp.experts.gate_up_proj": 0.5,
        "lm_head.weight": 0.1,
    }
    assert by_kind(shares) == {
        "self_attn.q_proj.weight": {0: 0.4, 1: 0.6},
        "mlp.experts.gate_up_proj": {1: 0.5},
    }
