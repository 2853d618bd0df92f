"""SEAP: per-task structured masks, the logistic block schedule, switching masks without reloading."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tiny_llama

import prunekit
from prunekit.methods.budgets import logistic_ratios


def _calib():
    g = torch.Generator().manual_seed(0)
    return {
        "low": torch.randint(2, 30, (6, 16), generator=g),
        "high": torch.randint(30, 64, (6, 16), generator=g),
    }


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_each_task_gets_its_own_mask_and_the_generic_one_blends_them():
    model = make_tiny_llama(seed=20)
    removed = {}
    for task in ("low", "high", None):
        pruned = copy.deepcopy(model)
        report = prunekit.prune(
            pruned,
            method="seap",
            sparsity=0.3,
            calibration=_calib(),
            task=task,
            logistic={"first": 0, "last": 0},
        )
        assert report.structure == "structured" and report.params_after < report.params_before
        removed[task] = report.removed
    assert removed["low"] != removed["high"]
    assert removed[None] != removed["low"] or removed[None] != removed["high"]


def test_task_masks_switch_and_reset_exactly():
    model = make_tiny_llama(seed=21)
    dense = _state(model)
    masks = prunekit.task_masks(model, _calib(), sparsity=0.3, logistic={"first": 0, "last": 0})
    assert sorted(masks.tasks) == ["high", "low"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in dense.items())  # still dense
    ids = torch.randint(2, 64, (2, 10))
    logits = {}
    for task in ("low", "high", None, "low"):
        masks.apply(task)
        logits.setdefault(task, []).append(model(ids).logits.detach())
        reference = copy.deepcopy(make_tiny_llama(seed=21))
        prunekit.prune(
            reference,
            method="seap",
            sparsity=0.3,
            calibration=_calib(),
            task=task,
            mode="soft",
            logistic={"first": 0, "last": 0},
        )
        torch.testing.assert_close(logits[task][-1], reference(ids).logits.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(logits["low"][0], logits["low"][1], atol=0, rtol=0)
    masks.reset()
    state = model.state_dict()
    assert state.keys() == dense.keys() and all(torch.equal(v, state[k]) for k, v in dense.items())


@pytest.mark.parametrize("layers", [6, 12, 30])
@pytest.mark.parametrize("sparsity", [0.1, 0.2, 0.4])
def test_logistic_schedule_spares_the_ends_and_meets_the_mean(layers, sparsity):
    class FakeGroup:
        def __init__(self, i):
            self.i = i

        def layer_index(self):
            return self.i

    groups = [FakeGroup(i) for i in range(layers)]
    if sparsity * layers / (layers - 4) >= 1:
        with pytest.raises(ValueError, match="cannot be reached"):
            logistic_ratios(groups, sparsity)
        return
    ratios = logistic_ratios(groups, sparsity)
    assert ratios[:2] == [0.0, 0.0] and ratios[-2:] == [0.0, 0.0]
    assert sum(ratios) / layers == pytest.approx(sparsity, abs=1e-6)
    inner = ratios[2:-2]
    assert all(a <= b + 1e-12 for a, b in zip(inner, inner[1:]))  # increasing with depth


def test_seap_bad_inputs_leave_the_model_unchanged():
    model = make_tiny_llama(seed=22)
    before = _state(model)
    with pytest.raises(ValueError, match="not in the calibration dict"):
        prunekit.prune(model, method="seap", sparsity=0.2, calibration=_calib(), task="poetry")
    with pytest.raises(ValueError, match="task-specific structured"):
        prunekit.prune(model, method="wanda", sparsity=0.2, calibration=_calib())
    with pytest.raises(ValueError, match="needs calibration given as a dict"):
        prunekit.prune(model, method="seap", sparsity=0.2, calibration=_calib()["low"], task="low")
    with pytest.raises(ValueError, match="protected blocks leave none"):
        prunekit.prune(model, method="seap", sparsity=0.2, calibration=_calib())  # 2 + 2 dense of 2 blocks
    with pytest.raises(ValueError, match="no mask for task"):
        prunekit.task_masks(model, _calib(), logistic={"first": 0, "last": 0}).apply("poetry")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
