"""Quality metrics for comparing a pruned model with its dense original.

Perplexity says how well a model predicts held-out text; the Jensen-Shannon divergence between the
pruned and dense models' next-token distributions says how far pruning moved the model, which is more
sensitive than perplexity at low sparsity.  Both compute in fp32 (logits are upcast) so results from
bf16/fp16 models are comparable with fp32 ones.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..engine.calibration import input_device

__all__ = ["perplexity", "js_divergence"]


def perplexity(
    model: nn.Module, windows: torch.LongTensor, batch_size: int = 4, progress: bool = False
) -> float:
    """exp of the mean next-token negative log-likelihood over all windows.

    Every token except the first of each window is predicted from the tokens before it in the same
    window; the first token (usually BOS) has no context and is not scored.  The mean is over tokens,
    not windows, so it is independent of ``batch_size``.  Runs under ``torch.inference_mode`` with the
    model in eval mode (its previous mode is restored) and without a KV cache.

    Raises:
        ValueError: ``windows`` is not a non-empty 2-D integer tensor with at least 2 columns, or
            ``batch_size`` < 1.
    """
    _validate(windows, batch_size)
    total_nll = 0.0
    total_tokens = 0
    with eval_mode(model), torch.inference_mode():
        for batch in _batches(windows, batch_size, progress, "perplexity"):
            logits = model_logits(model, batch)[:, :-1]
            targets = batch[:, 1:].to(logits.device)
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
            total_nll += float(nll.double())
            total_tokens += targets.numel()
    return math.exp(total_nll / total_tokens)


def js_divergence(
    model_a: nn.Module,
    model_b: nn.Module,
    windows: torch.LongTensor,
    batch_size: int = 4,
    progress: bool = False,
) -> float:
    """Mean Jensen-Shannon divergence between two models' next-token distributions, in nats.

    Uses the natural logarithm, so the value lies in ``[0, ln 2]`` (about 0.693): 0 when the models agree
    exactly, ln 2 when their predictions have disjoint support.  It is averaged over the same positions
    :func:`perplexity` scores (every position but the last of each window).  JS is used rather than KL
    because it is symmetric and bounded, so a pruned model that assigns ~0 probability to a token the
    dense model likes cannot blow the average up.

    Computed from log-softmax values: ``M = (P + Q) / 2`` is formed in log space with ``logsumexp`` and
    zero-probability terms contribute exactly 0, so there are no ``log(0)`` NaNs.

    Raises:
        ValueError: invalid ``windows``/``batch_size`` (as for :func:`perplexity`) or the two models
            produce different vocabulary sizes.
    """
    _validate(windows, batch_size)
    total = 0.0
    count = 0
    with eval_mode(model_a), eval_mode(model_b), torch.inference_mode():
        for batch in _batches(windows, batch_size, progress, "js divergence"):
            log_p = F.log_softmax(model_logits(model_a, batch)[:, :-1], dim=-1)
            log_q = F.log_softmax(model_logits(model_b, batch)[:, :-1], dim=-1).to(log_p.device)
            if log_p.shape != log_q.shape:
                raise ValueError(
                    f"Models disagree on output shape: {tuple(log_p.shape)} vs {tuple(log_q.shape)} "
                    "(different vocabularies?)"
                )
            js = _js_per_position(log_p, log_q)
            total += float(js.double().sum())
            count += js.numel()
    return min(max(total / count, 0.0), math.log(2.0))


def _js_per_position(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """JS divergence along the last dim, from log-probabilities; clamped to ``[0, ln 2]``."""
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - math.log(2.0)
    p, q = log_p.exp(), log_q.exp()
    # p * (log p - log m), defined as 0 where p == 0 (log p may be -inf there).
    kl_pm = torch.where(p > 0, p * (log_p - log_m), torch.zeros_like(p)).sum(-1)
    kl_qm = torch.where(q > 0, q * (log_q - log_m), torch.zeros_like(q)).sum(-1)
    return (0.5 * (kl_pm + kl_qm)).clamp(0.0, math.log(2.0))


def _validate(windows: torch.Tensor, batch_size: int) -> None:
    """Reject inputs that would silently give a meaningless number."""
    if not isinstance(windows, torch.Tensor):
        raise ValueError(f"windows must be a torch.LongTensor, got {type(windows).__name__}")
    if windows.dtype != torch.long:
        raise ValueError(f"windows must have dtype torch.long, got {windows.dtype}")
    if windows.dim() != 2:
        raise ValueError(f"windows must be 2-D [num_windows, seq_len], got shape {tuple(windows.shape)}")
    if windows.shape[0] < 1 or windows.shape[1] < 2:
        raise ValueError(
            f"windows needs at least 1 row and 2 columns (a context token and a target), got shape "
            f"{tuple(windows.shape)}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _batches(windows: torch.Tensor, batch_size: int, progress: bool, desc: str) -> Iterator[torch.Tensor]:
    starts = range(0, windows.shape[0], batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, unit="batch"):
        yield windows[start : start + batch_size]


def model_logits(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """fp32 logits ``[B, L, V]`` for a batch of full (unpadded) windows."""
    out = model(input_ids=batch.to(input_device(model)), use_cache=False)
    logits = out.logits if hasattr(out, "logits") else out[0]
    return logits.float()


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the duration, then restore its previous mode.

    Evaluating must not have side effects on a model the caller may go on fine-tuning.
    """
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
