"""Retraining: the causal-LM loss of the whole model on training windows, updating only the attached
recovery tensors (:mod:`.trainable`).

Windows are drawn in a seeded order, ``batch_size`` per step, cycling when the steps outlast the data.
Gradient checkpointing (transformers' own, non-reentrant) trades a second forward of every block for
the memory of its activations; Mamba-1 blocks train through the project's linear-time CPU scan.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ...families.mamba_scan import linear_mamba_scan
from ...spec.recovery import RecoverySpec
from ..calibration import input_device
from .optim import optimizer, step
from .trainable import Trainables


def retrain(
    model: torch.nn.Module,
    spec: RecoverySpec,
    windows: torch.Tensor,
    trainables: Trainables,
    notes: list[str],
) -> list[float]:
    """Train ``trainables`` for ``spec.steps_for(len(windows))`` steps; returns the loss of every step."""
    params = trainables.parameters()
    steps = spec.steps_for(len(windows))
    opt, scheduler = optimizer(params, spec, steps)
    order = _order(len(windows), steps * spec.batch_size, spec.seed)
    device = input_device(model)
    losses: list[float] = []
    bar = tqdm(total=steps, desc="recover (retrain)", disable=not spec.progress)
    with _training(model, spec.gradient_checkpointing, notes), linear_mamba_scan(), torch.enable_grad():
        for i in range(steps):
            batch = windows[order[i * spec.batch_size : (i + 1) * spec.batch_size]].to(device)
            loss = lm_loss(model, batch)
            step(opt, scheduler, loss, params)
            losses.append(float(loss.detach()))
            bar.update()
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    bar.close()
    return losses


def lm_loss(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over every position but the last of each window."""
    out = model(input_ids=batch, use_cache=False)
    logits = out.logits if hasattr(out, "logits") else out[0]
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch[:, 1:].flatten())


def _order(n: int, total: int, seed: int) -> torch.Tensor:
    """``total`` window indices: seeded permutations of ``range(n)``, one after another."""
    gen = torch.Generator().manual_seed(seed)
    rounds = -(-total // n)
    return torch.cat([torch.randperm(n, generator=gen) for _ in range(rounds)])[:total]


@contextlib.contextmanager
def _training(model: torch.nn.Module, checkpointing: bool, notes: list[str]):
    """Training mode (transformers checkpoints only then) and, if asked, activation checkpointing; both
    restored afterwards."""
    was_training = model.training
    enable, disable, state = _checkpointing_api(model)
    turned_on = False
    if checkpointing and not state():
        if getattr(model, "supports_gradient_checkpointing", False) and enable is not None:
            enable({"use_reentrant": False})
            turned_on = True
        else:
            notes.append(f"{type(model).__name__} does not support gradient checkpointing; trained without")
    model.train()
    try:
        yield
    finally:
        if turned_on:
            disable()
        model.train(was_training)


def _checkpointing_api(model: torch.nn.Module):
    """transformers 5 renamed gradient checkpointing to activation checkpointing; use what exists."""
    if hasattr(model, "activation_checkpointing_enable"):
        return (
            model.activation_checkpointing_enable,
            model.activation_checkpointing_disable,
            lambda: bool(model.is_activation_checkpointing),
        )
    if hasattr(model, "gradient_checkpointing_enable"):
        return (
            lambda kw: model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw),
            model.gradient_checkpointing_disable,
            lambda: bool(getattr(model, "is_gradient_checkpointing", False)),
        )
    return None, None, lambda: False
