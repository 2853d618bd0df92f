"""Normalisation layers, found by what they do rather than by class name.

Recovery trains every normalisation weight a model has (RMSNorm, LayerNorm, Mamba-2's gated norm,
query/key norms, whatever a new family calls them), so a whitelist of classes would miss the next one.
A normalisation layer is recognised by its defining property instead: it owns a 1-D ``weight`` the size
of its input's last dimension, returns its input's shape, and is invariant to scaling that input
(``f(3x) = f(x)``). Linear maps, embeddings and convolutions fail the test (they scale with the input or
own matrices), and a module that cannot be called on a plain hidden-state tensor is not one.
"""

from __future__ import annotations

import torch

__all__ = ["find_norms", "is_norm"]

_NOT_NORMS = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d)


@torch.no_grad()
def is_norm(module: torch.nn.Module) -> bool:
    """Whether ``module`` behaves as a normalisation layer (see the module docstring)."""
    weight = module._parameters.get("weight")
    if isinstance(module, _NOT_NORMS) or weight is None or weight.dim() != 1 or weight.is_meta:
        return False
    size = weight.shape[0]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, size, generator=gen).to(device=weight.device, dtype=weight.dtype)
    try:
        y1, y3 = module(x), module(3 * x)
    except Exception:  # needs other arguments or another layout: not a plain normalisation layer
        return False
    if not isinstance(y1, torch.Tensor) or y1.shape != x.shape:
        return False
    tol = 1e-3 if weight.dtype == torch.float32 else 5e-2
    scale = float(y1.float().abs().max()) or 1.0
    return bool(torch.allclose(y1.float(), y3.float(), atol=tol * scale, rtol=tol))


def find_norms(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Module name -> every normalisation layer of ``model``, in model order."""
    return {name: mod for name, mod in model.named_modules() if is_norm(mod)}
