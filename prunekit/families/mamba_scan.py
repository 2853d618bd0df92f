"""A linear-time CPU training scan for transformers' Mamba-1, swapped in only while training
(reference-model training, BESA's block training).

Without the ``mamba_ssm`` CUDA kernels, transformers runs Mamba-1's selective scan as a Python loop
that reads step ``t`` with ``tensor[:, :, t]``.  That is fine for inference, but autograd turns every
such index into a zero-filled tensor *of the whole sequence* that the gradient is added into, so a
backward pass costs O(L^2) memory traffic per layer: at 256 tokens it was over 50x slower per token
than a Llama of the same size, which makes training a Mamba-1 reference model on a CPU impractical.

:func:`linear_selective_scan` computes exactly the same recurrence
``h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t``, ``y_t = C_t . h_t + D x_t``, gated by ``silu(z)``, but
runs the recurrence as a single autograd node with a hand-written adjoint (one fused multiply-add per
step in each direction, no per-step graph) and reads the outputs from all states in one batched
product, so the backward is linear in L and cheap.  :func:`linear_mamba_scan` installs it
in transformers' Mamba module for the duration of a ``with`` block; the model class, its weights and
its saved files are untouched, and inference outside the block uses transformers' own code.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

__all__ = ["linear_selective_scan", "linear_mamba_scan"]

_MODULE = "transformers.models.mamba.modeling_mamba"
_ATTR = "mamba_selective_scan"


def linear_selective_scan(
    hidden_states: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    **_unused,
):
    """Mamba-1 selective scan with the signature and layout of transformers' ``mamba_selective_scan``.

    Shapes: ``hidden_states``, ``dt``, ``z`` are ``[batch, channels, L]``; ``A`` is
    ``[channels, state]``; ``B`` and ``C`` are ``[batch, state, L]``.  Returns ``[batch, channels, L]``
    (and the last state ``[batch, channels, state]`` when ``return_last_state``).
    """
    input_dtype = hidden_states.dtype
    if delta_bias is not None:
        dt = dt + delta_bias.to(dt.dtype)[..., None]
    if delta_softplus:
        dt = F.softplus(dt)
    B = B.transpose(1, 2)  # [batch, L, state]
    C = C.transpose(1, 2)
    # Time-major [L, batch, channels, state] so that each step reads and writes contiguous memory.
    dt_t = dt.permute(2, 0, 1)[..., None]  # [L, batch, channels, 1]
    decay = torch.exp(A[None, None] * dt_t)
    dt_x = dt_t * hidden_states.permute(2, 0, 1)[..., None].float()  # small; one big product below
    drive = dt_x * B.transpose(0, 1)[:, :, None, :].float()

    all_states = _LinearRecurrence.apply(decay, drive)  # [L, batch, channels, state]
    state = all_states[-1]
    # y[b, c, t] = sum_n h[t, b, c, n] C[b, t, n], as one batched matrix product over (t, b)
    scan_output = torch.matmul(all_states.to(input_dtype), C.transpose(0, 1)[..., None])[..., 0]
    scan_output = scan_output.permute(1, 2, 0)

    if D is not None:
        scan_output = scan_output + hidden_states * D[None, :, None]
    if z is not None:
        scan_output = scan_output * F.silu(z)
    if return_last_state:
        return scan_output, state
    return scan_output


class _LinearRecurrence(torch.autograd.Function):
    """``h[t] = a[t] * h[t-1] + b[t]`` along dim 0 with ``h[-1] = 0``, and its exact backward.

    Written as one autograd node so that neither direction records per-step graph nodes: the forward
    fills a preallocated output with one fused multiply-add per step, and the backward runs the adjoint
    recurrence ``g[t] = dL/dh[t] + a[t+1] * g[t+1]`` the same way, giving ``dL/db = g`` and
    ``dL/da[t] = g[t] * h[t-1]``.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = a.contiguous(), b.contiguous()
        h = torch.empty_like(b)
        h[0] = b[0]
        for t in range(1, h.shape[0]):
            torch.addcmul(b[t], a[t], h[t - 1], out=h[t])
        ctx.save_for_backward(a, h)
        return h

    @staticmethod
    def backward(ctx, grad_h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, h = ctx.saved_tensors
        grad_h = grad_h.contiguous()
        g = torch.empty_like(grad_h)
        g[-1] = grad_h[-1]
        for t in range(g.shape[0] - 2, -1, -1):
            torch.addcmul(grad_h[t], a[t + 1], g[t + 1], out=g[t])
        grad_a = torch.zeros_like(a)
        grad_a[1:] = g[1:] * h[:-1]
        return grad_a, g


@contextlib.contextmanager
def linear_mamba_scan() -> Iterator[bool]:
    """Use :func:`linear_selective_scan` for transformers' Mamba-1 inside the block.

    Yields True when the swap happened, False when this transformers version has no such function to
    replace (training then runs on the stock scan: correct, only slower).  The original is restored on
    exit, also after an exception.
    """
    module = importlib.import_module(_MODULE)
    original = getattr(module, _ATTR, None)
    if original is None:
        yield False
        return
    setattr(module, _ATTR, linear_selective_scan)
    try:
        yield True
    finally:
        setattr(module, _ATTR, original)
