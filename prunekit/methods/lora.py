"""Trainable reparametrisations of a weight for recovery after pruning (PERP), as
``torch.nn.utils.parametrize`` modules: ``forward(W)`` is the effective weight the layer computes with.

- :class:`LowRank` ``"mask"`` (MaskLoRA): ``W + (α/r)·(B A ⊙ 1[W ≠ 0])``: the update never reaches a
  pruned entry, so merging keeps every zero (and so any N:M pattern) exactly;
- ``"scale"`` (ScaleLoRA): ``W ⊙ (B A)`` with ``A`` and ``B`` filled with ``1/√r`` so that ``B A = 1`` at
  the start: a multiplicative update, zero wherever ``W`` is;
- ``"plain"`` (LoRA, for comparison): ``W + (α/r)·B A`` while training; the merge masks the update, so
  the merged model keeps its zeros too (the trained model and the merged one then differ).
- :class:`Offset`: ``W + Δ`` for a vector (a bias, a norm's weight), ``Δ`` starting at zero.

Every trainable tensor is fp32 whatever the model's dtype (the effective weight is cast back), so a bf16
model trains with fp32 updates and optimizer state. The model's own parameters are never trained: the
update lives beside them, so dropping it restores the model bit for bit.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["LowRank", "Offset"]


class LowRank(nn.Module):
    """A rank-``rank`` update of a 2-D (or flattened) weight of shape ``shape``; see the module docstring."""

    def __init__(
        self, kind: str, shape: torch.Size, rank: int, scaling: float, generator: torch.Generator, device=None
    ) -> None:
        super().__init__()
        if kind not in ("mask", "scale", "plain"):
            raise ValueError(f"unknown low-rank kind {kind!r}")
        rows, cols = shape[0], math.prod(shape[1:])
        self.kind, self.scaling = kind, float(scaling)
        if kind == "scale":
            a = torch.full((rank, cols), 1 / math.sqrt(rank))
            b = torch.full((rows, rank), 1 / math.sqrt(rank))
        else:  # LoRA's initialisation: A uniform in ±1/√fan_in (kaiming, a=√5), B zero
            bound = 1 / math.sqrt(cols)
            a = (torch.rand(rank, cols, generator=generator) * 2 - 1) * bound
            b = torch.zeros(rows, rank)
        self.a = nn.Parameter(a.to(device))
        self.b = nn.Parameter(b.to(device))

    def product(self, weight: torch.Tensor) -> torch.Tensor:
        return (self.b @ self.a).view(weight.shape)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        w, ba = weight.float(), self.product(weight)
        if self.kind == "scale":
            out = w * ba
        elif self.kind == "mask":
            out = w + self.scaling * ba.masked_fill(weight == 0, 0.0)
        else:
            out = w + self.scaling * ba
        return out.to(weight.dtype)

    @torch.no_grad()
    def merged(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight to keep: the effective one, with every zero of ``weight`` still zero."""
        out = self.forward(weight)
        return out.masked_fill(weight == 0, 0) if self.kind == "plain" else out


class Offset(nn.Module):
    """``W + Δ`` with a trainable fp32 ``Δ`` (zero at the start)."""

    def __init__(self, shape: torch.Size, device=None) -> None:
        super().__init__()
        self.delta = nn.Parameter(torch.zeros(shape, device=device))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return (weight.float() + self.delta).to(weight.dtype)

    @torch.no_grad()
    def merged(self, weight: torch.Tensor) -> torch.Tensor:
        return self.forward(weight)
