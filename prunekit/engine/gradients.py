"""The runner for full-model statistics (:attr:`~prunekit.methods.statistics.Scope.MODEL`): gradients.

Gradient statistics (GBLM's gradient norms, Taylor's gradient sums) cannot be computed block by block:
the loss sits at the end of the model, so this is the one full-model pass. It is kept cheap by enabling
gradients only on the requested parameters (no optimizer state, no gradients for embeddings or norms)
and by running one sequence at a time, so the extra memory is one gradient per parameter, the running
sums of each statistic per parameter, and one sequence's activations. Each sequence's gradient is
handed to every declared statistic's accumulator; what a statistic makes of it is its own business.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from tqdm.auto import tqdm

from ..methods.statistics import Accumulator, Scope, Statistic, ordered
from . import distributed
from .calibration import input_device


def model_statistics(
    model: torch.nn.Module,
    ids: torch.Tensor,
    params: dict[str, torch.nn.Parameter],
    needs: Collection[Statistic],
    progress: bool = False,
) -> dict[str, dict[type[Statistic], torch.Tensor]]:
    """``{param name: {statistic class: value}}`` for the full-model statistics in ``needs``.

    One backward per calibration sequence (its mean next-token loss); under ``torchrun`` each rank runs
    its shard and the running sums are added over ranks before they are finalised. Leaves
    ``requires_grad`` flags, ``.grad`` and train/eval mode as they were.
    """
    statistics = ordered(s for s in needs if s.scope is Scope.MODEL)
    if not statistics:
        return {}
    acc = {name: [Accumulator(s) for s in statistics] for name in params}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    targets = {id(p) for p in params.values()}
    was_training = model.training
    model.eval()  # no dropout: the gradient of the model being pruned
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in targets)
            p.grad = None
        with distributed.step():
            _run_sequences(model, distributed.shard(ids).to(input_device(model)), params, acc, progress)
        distributed.all_reduce_([t for name in sorted(acc) for a in acc[name] for t in a.tensors()])
    finally:
        for name, p in model.named_parameters():
            p.grad = None
            p.requires_grad_(flags[name])
        model.train(was_training)
    count = int(ids.shape[0])
    return {name: {type(a.statistic): a.result(count) for a in accs} for name, accs in acc.items()}


def _run_sequences(model, ids, params, acc, progress) -> None:
    for row in tqdm(ids, desc="gradients", disable=not progress):
        seq = row.unsqueeze(0)
        loss = model(input_ids=seq, labels=seq, use_cache=False).loss
        if not torch.isfinite(loss):
            raise ValueError("non-finite loss while computing calibration gradients")
        loss.backward()
        with torch.no_grad():
            for name, p in params.items():
                # no gradient at all: the loss does not depend on it for this sequence (an expert no token
                # of it was routed to), which is a zero gradient, not a missing one
                grad = p.grad if p.grad is not None else torch.zeros_like(p)
                for a in acc[name]:
                    a.add(grad)
                p.grad = None
