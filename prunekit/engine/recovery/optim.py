"""AdamW with a linear warm-up, then linear decay to zero (PERP's defaults) or a constant rate."""

from __future__ import annotations

import torch

from ...spec.recovery import RecoverySpec


def optimizer(params: list[torch.nn.Parameter], spec: RecoverySpec, steps: int):
    """The optimizer and its scheduler for ``steps`` steps (call ``scheduler.step()`` after each)."""
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    warm = int(spec.warmup * steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        if spec.schedule == "constant":
            return 1.0
        return max(0.0, (steps - step) / max(1, steps - warm))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def step(opt, scheduler, loss: torch.Tensor, params: list[torch.nn.Parameter]) -> None:
    """One update from ``loss``: gradients for ``params`` only (the model's own parameters, their
    ``requires_grad`` and ``.grad`` are never touched), then the optimizer and the schedule."""
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    for p, g in zip(params, grads):
        p.grad = g
    opt.step()
    opt.zero_grad(set_to_none=True)
    scheduler.step()
