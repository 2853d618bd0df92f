"""Least-squares refit of a consumer layer after some of its input channels are removed.

Mean compensation (FLAP) keeps each shrunk layer's *expected* output: it folds W[:, R] · E[x_R] into the
bias. The refit keeps as much of the output itself as a linear function of the surviving inputs can:
over the calibration tokens it solves

    min_{W', b'}  E || W x + b - (W' x_K + b') ||²

for the kept columns K, whose normal equations need only the input's second moment G = E[x xᵀ] (from the
Hessian statistic, H = 2 G) and mean μ:

    [W' b'] = (W [G_{:,K}  μ] + b [μ_Kᵀ 1]) · A⁻¹,   A = [[G_KK + λI, μ_K], [μ_Kᵀ, 1]].

With nothing removed it gives back W and b. λ (``damp`` times the mean diagonal of G_KK) keeps the
solve stable when kept inputs are nearly collinear, as SparseGPT damps its Hessian.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def refit(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    hessian: torch.Tensor,
    mean: torch.Tensor,
    removed: torch.Tensor,
    damp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The new weight (removed columns zeroed, same shape) and the new bias of one consumer, in fp64."""
    w = weight.detach().double()
    cols = w.shape[1]
    keep = torch.ones(cols, dtype=torch.bool, device=w.device)
    keep[removed.to(w.device)] = False
    g = hessian.detach().double().to(w.device) / 2.0
    mu = mean.detach().double().reshape(-1).to(w.device)
    b = torch.zeros(w.shape[0], dtype=torch.float64, device=w.device) if bias is None else bias.double()
    gk = g[keep][:, keep]
    lam = damp * float(gk.diagonal().mean()) if gk.numel() else 0.0
    k = int(keep.sum())
    a = torch.empty(k + 1, k + 1, dtype=torch.float64, device=w.device)
    a[:k, :k] = gk + lam * torch.eye(k, dtype=torch.float64, device=w.device)
    a[:k, k] = a[k, :k] = mu[keep]
    a[k, k] = 1.0
    target = torch.cat([w @ g[:, keep], (w @ mu + b).unsqueeze(1)], dim=1)
    target[:, :k] += b.unsqueeze(1) * mu[keep].unsqueeze(0)
    solution = torch.linalg.solve(a, target.T).T  # A is symmetric
    new_w = torch.zeros_like(w)
    new_w[:, keep] = solution[:, :k]
    return new_w, solution[:, k]
