"""Per-weight gradient statistics for gradient-aware scorers (GBLM-Pruner).

The score needs G = sqrt(sum_s (scale * dL_s/dW)^2): the l2 norm, over calibration sequences, of each
sequence's gradient of its mean next-token loss. Gradients cannot be computed block by block (the
loss sits at the end of the model), so this is the one full-model pass; it is kept cheap by enabling
gradients only on the targeted weights (no optimizer state, no gradients for embeddings or norms) and
by running one sequence at a time, so the extra memory is one gradient per targeted weight, one fp32
accumulator per targeted weight, and one sequence's activations.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from . import distributed
from .calibration import input_device


def gradient_norms(
    model: torch.nn.Module,
    ids: torch.Tensor,
    weights: dict[str, torch.nn.Parameter],
    scale: float = 100.0,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """``{name: sqrt(sum over sequences of (scale * grad)^2)}`` for each weight in ``weights``."""

    def add(acc, grad):
        g = grad.float() * scale
        acc += g * g

    return {n: a.sqrt_() for n, a in _accumulate(model, ids, weights, add, progress).items()}


def gradient_sums(
    model: torch.nn.Module,
    ids: torch.Tensor,
    weights: dict[str, torch.nn.Parameter],
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """``{name: sum over sequences of dL_s/dW}``: the gradient of the summed calibration loss, which a
    first-order Taylor expansion of the loss needs (``L(W - w) - L(W) ≈ -g·w``)."""

    def add(acc, grad):
        acc += grad.float()

    return _accumulate(model, ids, weights, add, progress)


def _accumulate(model, ids, weights, add, progress) -> dict[str, torch.Tensor]:
    """Run one sequence at a time with gradients only on ``weights``; ``add(acc, grad)`` folds each
    sequence's gradient into an fp32 accumulator per weight. Leaves ``requires_grad`` flags, ``.grad``
    and train/eval mode as they were."""
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    targets = {id(p) for p in weights.values()}
    acc = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in weights.items()}
    was_training = model.training
    model.eval()  # no dropout: the gradient of the model being pruned
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in targets)
            p.grad = None
        with distributed.step():
            _run_sequences(model, distributed.shard(ids).to(input_device(model)), weights, add, acc, progress)
        distributed.all_reduce_([acc[name] for name in sorted(acc)])
    finally:
        for name, p in model.named_parameters():
            p.grad = None
            p.requires_grad_(flags[name])
        model.train(was_training)
    return acc


def _run_sequences(model, ids, weights, add, acc, progress) -> None:
    for row in tqdm(ids, desc="gradients", disable=not progress):
        seq = row.unsqueeze(0)
        loss = model(input_ids=seq, labels=seq, use_cache=False).loss
        if not torch.isfinite(loss):
            raise ValueError("non-finite loss while computing calibration gradients")
        loss.backward()
        with torch.no_grad():
            for name, p in weights.items():
                add(acc[name], p.grad)
                p.grad = None
