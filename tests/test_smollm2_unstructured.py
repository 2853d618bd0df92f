"""Unstructured and N:M methods on the real SmolLM2-135M, calibrated on the default text (CI-sized)."""

from __future__ import annotations

import copy

import pytest

import prunekit
from prunekit.data import calibration_ids, eval_windows
from prunekit.eval import perplexity

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(smollm2):
    model, tok = smollm2
    calibration = calibration_ids(tok, n_samples=16, seq_len=128, seed=0)
    windows = eval_windows(tok, seq_len=256, max_windows=6)
    return model, calibration, windows, perplexity(model, windows)


@pytest.fixture(scope="module")
def half_sparse_ppl(setup):
    model, calibration, windows, _dense = setup
    out = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        pruned = copy.deepcopy(model)
        report = prunekit.prune(pruned, method=method, sparsity=0.5, calibration=calibration[:8])
        assert report.achieved == pytest.approx(0.5, abs=1e-6)
        out[method] = perplexity(pruned, windows)
        del pruned
    return out


def test_wanda_and_sparsegpt_are_far_better_than_magnitude_at_half(setup, half_sparse_ppl):
    dense = setup[3]
    ppl = half_sparse_ppl
    assert ppl["magnitude"] > 100  # a 135M model is fragile under magnitude pruning
    assert ppl["wanda"] < 3 * dense
    assert ppl["sparsegpt"] < 3 * dense
    assert ppl["wanda"] < ppl["magnitude"] / 4 and ppl["sparsegpt"] < ppl["magnitude"] / 4


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "gblm"])
def test_two_four_works_for_every_scorer(setup, method):
    model, calibration, windows, dense = setup
    pruned = copy.deepcopy(model)
    report = prunekit.prune(pruned, method=method, structure="2:4", calibration=calibration[:4])
    mask = report.masks["model.layers.5.mlp.up_proj.weight"]
    assert bool((mask.reshape(mask.shape[0], -1, 4).sum(-1) == 2).all())
    w = pruned.model.layers[5].mlp.up_proj.weight
    assert bool((w.reshape(w.shape[0], -1, 4) == 0).sum(-1).ge(2).all())
    ppl = perplexity(pruned, windows[:2])
    assert dense < ppl < float("inf")


def test_owl_beats_uniform_wanda_at_seventy_percent(setup):
    model, calibration, windows, _dense = setup
    uniform, owl = copy.deepcopy(model), copy.deepcopy(model)
    prunekit.prune(uniform, method="wanda", sparsity=0.7, calibration=calibration)
    report = prunekit.prune(owl, method="wanda", sparsity=0.7, calibration=calibration, allocation="owl")
    spread = set(round(s, 4) for s in report.block_sparsity.values())
    assert len(spread) > 1 and min(spread) >= 0.7 - 0.08 - 1e-6 and max(spread) <= 0.7 + 0.08 + 1e-6
    assert report.achieved == pytest.approx(0.7, abs=2e-3)
    assert perplexity(owl, windows) < perplexity(uniform, windows)
