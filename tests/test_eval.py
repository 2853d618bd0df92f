"""Tests for prunekit.eval: perplexity and Jensen-Shannon divergence against hand computations."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import make_tiny_llama
from torch import nn

from prunekit.data import eval_windows
from prunekit.eval import js_divergence, perplexity

LN2 = math.log(2.0)


def _windows(rows: int = 5, length: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 64, (rows, length), generator=torch.Generator().manual_seed(seed))


class FixedLogits(nn.Module):
    """A 'model' whose next-token logits are the same table row at every position, for exact cases."""

    def __init__(self, row: torch.Tensor) -> None:
        super().__init__()
        self.row = nn.Parameter(row.clone())

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False) -> SimpleNamespace:
        assert use_cache is False
        b, length = input_ids.shape
        return SimpleNamespace(logits=self.row.expand(b, length, -1))


def test_perplexity_matches_hand_computation(tiny_llama) -> None:
    windows = _windows()
    nlls = []
    with torch.no_grad():
        for row in windows:
            logits = tiny_llama(input_ids=row[None]).logits[0].double()
            log_probs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
            for t in range(1, row.numel()):  # the first token is context only, never a target
                nlls.append(-float(log_probs[t - 1, row[t]]))
    expected = math.exp(sum(nlls) / len(nlls))
    assert len(nlls) == 5 * 11
    assert perplexity(tiny_llama, windows, batch_size=2) == pytest.approx(expected, rel=1e-5)


def test_perplexity_independent_of_batch_size(tiny_llama) -> None:
    windows = _windows(rows=7)
    reference = perplexity(tiny_llama, windows, batch_size=7)
    for batch_size in (1, 3, 100):
        assert perplexity(tiny_llama, windows, batch_size=batch_size) == pytest.approx(reference, rel=1e-5)


def test_perplexity_of_uniform_model_is_vocab_size() -> None:
    model = FixedLogits(torch.zeros(64))
    assert perplexity(model, _windows()) == pytest.approx(64.0, rel=1e-6)


def test_perplexity_restores_training_mode_and_progress(tiny_llama) -> None:
    tiny_llama.train()
    value = perplexity(tiny_llama, _windows(), progress=True)
    assert tiny_llama.training
    assert value == pytest.approx(perplexity(tiny_llama.eval(), _windows()), rel=1e-6)


def test_perplexity_bfloat16_close_to_fp32(tiny_llama) -> None:
    windows = _windows()
    half = copy.deepcopy(tiny_llama).to(torch.bfloat16)
    assert perplexity(half, windows) == pytest.approx(perplexity(tiny_llama, windows), rel=0.05)


@pytest.mark.parametrize(
    "bad",
    [
        [[1, 2, 3]],  # not a tensor
        torch.tensor([[1.0, 2.0, 3.0]]),  # float dtype
        torch.tensor([1, 2, 3]),  # 1-D
        torch.zeros((2, 3, 4), dtype=torch.long),  # 3-D
        torch.zeros((2, 1), dtype=torch.long),  # nothing to predict
        torch.zeros((0, 5), dtype=torch.long),  # no windows
    ],
)
def test_input_validation(tiny_llama, bad) -> None:
    with pytest.raises(ValueError):
        perplexity(tiny_llama, bad)
    with pytest.raises(ValueError):
        js_divergence(tiny_llama, tiny_llama, bad)


def test_batch_size_validation(tiny_llama) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        perplexity(tiny_llama, _windows(), batch_size=0)


def test_js_of_model_with_itself_is_zero(tiny_llama) -> None:
    assert js_divergence(tiny_llama, tiny_llama, _windows()) == pytest.approx(0.0, abs=1e-7)
    assert js_divergence(tiny_llama, copy.deepcopy(tiny_llama), _windows()) == pytest.approx(0.0, abs=1e-7)


def test_js_symmetric_bounded_and_positive_for_different_models() -> None:
    a, b = make_tiny_llama(seed=0), make_tiny_llama(seed=1)
    windows = _windows(rows=6)
    ab = js_divergence(a, b, windows, batch_size=4)
    ba = js_divergence(b, a, windows, batch_size=3)
    assert 0.0 < ab <= LN2
    assert ab == pytest.approx(ba, rel=1e-5)


def test_js_matches_hand_computation() -> None:
    a, b = make_tiny_llama(seed=0), make_tiny_llama(seed=5)
    windows = _windows(rows=3, length=6)
    values = []
    with torch.no_grad():
        p_all = torch.softmax(a(input_ids=windows).logits.double(), -1)[:, :-1]
        q_all = torch.softmax(b(input_ids=windows).logits.double(), -1)[:, :-1]
    for p, q in zip(p_all.reshape(-1, 64), q_all.reshape(-1, 64), strict=True):
        m = (p + q) / 2
        values.append(0.5 * float((p * (p / m).log()).sum() + (q * (q / m).log()).sum()))
    expected = sum(values) / len(values)
    assert js_divergence(a, b, windows) == pytest.approx(expected, rel=1e-4)


def test_js_disjoint_support_reaches_ln2_without_nan() -> None:
    # Each model puts all its mass on a different token (the rest underflows to exactly 0 probability).
    row_a = torch.full((64,), -1e30)
    row_a[3] = 0.0
    row_b = torch.full((64,), -1e30)
    row_b[7] = 0.0
    value = js_divergence(FixedLogits(row_a), FixedLogits(row_b), _windows())
    assert not math.isnan(value)
    assert value == pytest.approx(LN2, rel=1e-6)
    assert js_divergence(FixedLogits(row_a), FixedLogits(row_a), _windows()) == 0.0


def test_js_rejects_mismatched_vocabularies() -> None:
    with pytest.raises(ValueError, match="vocab"):
        js_divergence(FixedLogits(torch.zeros(64)), FixedLogits(torch.zeros(65)), _windows())


@pytest.mark.slow
def test_smollm2_perplexity_is_sane(smollm2) -> None:
    model, tokenizer = smollm2
    windows = eval_windows(tokenizer, seq_len=128, max_windows=4)
    ppl = perplexity(model, windows)
    assert 2.0 < ppl < 60.0  # a trained model on documentation prose; a broken one is in the thousands
    damaged = copy.deepcopy(model)
    with torch.no_grad():
        for layer in damaged.model.layers:
            layer.mlp.down_proj.weight.zero_()
    assert perplexity(damaged, windows) > ppl
    js = js_divergence(model, damaged, windows[:2])
    assert 0.0 < js <= LN2
