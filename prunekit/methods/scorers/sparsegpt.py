"""SparseGPT (Frantar & Alistarh 2023): prune by the OBS saliency and update the kept weights.

Columns are processed in blocks of ``blocksize``. Inside a block the mask is chosen from
w² / [H⁻¹]_jj² (the loss increase of removing w under the layer-wise quadratic model with
H = 2XXᵀ/n), then each column's pruning error is spread over the not-yet-processed columns through the
upper Cholesky factor of H⁻¹. ``damp`` (fraction of the mean diagonal) regularises H; inputs that are
always zero ("dead" columns) get a unit diagonal and zero weights.

Per-matrix sparsity is exact: each block prunes its share floor(end·s) − floor(start·s) of the matrix's
``int(n·s)`` weights (per row with ``granularity="row"``); N:M picks the N lowest saliencies of
every group of M columns as the sweep reaches it.
"""

from __future__ import annotations

import torch

from ..select import lowest_in_rows
from ..statistics import Hessian
from ..threads import single_thread
from .base import Scorer, register_scorer


@register_scorer
class SparseGPT(Scorer):
    name = "sparsegpt"
    options = {"blocksize": 128, "damp": 0.01}
    structures = ("unstructured", "N:M")

    def statistics(self):
        return (Hessian(),)

    def weight_scores(self, weight, stats=None) -> torch.Tensor:
        """The OBS saliency w² / [H⁻¹]_jj² before any update (what the first block ranks by)."""
        hinv = _inverse_factor(stats[Hessian], float(self.config["damp"]), weight.shape[1])[0]
        return weight.detach().float() ** 2 / torch.diag(hinv).reshape(1, -1) ** 2

    @torch.no_grad()
    def prune_matrix(self, weight, stats, selection):
        # one thread for the whole matrix: switching per block re-initialises the thread pools
        with single_thread():
            return self._prune(weight, stats, selection)

    def _prune(self, weight, stats, selection):
        if Hessian not in stats:
            raise ValueError("sparsegpt needs the input Hessian of every weight it prunes")
        w = weight.detach().float().clone()
        rows, cols = w.shape
        hinv, dead = self._factor(stats[Hessian], cols)
        w[:, dead] = 0
        bs = int(self.config["blocksize"])
        pattern = selection.pattern
        if pattern is not None:
            bs = max(pattern.m, bs - bs % pattern.m)
        mask = torch.zeros_like(w, dtype=torch.bool)
        total = rows * cols
        for i1 in range(0, cols, bs):
            i2 = min(i1 + bs, cols)
            count = i2 - i1
            w1 = w[:, i1:i2].clone()
            q1 = torch.zeros_like(w1)
            err1 = torch.zeros_like(w1)
            h1 = hinv[i1:i2, i1:i2]
            d1 = torch.diag(h1)
            if pattern is None:
                saliency = w1**2 / d1.reshape(1, -1) ** 2
                if selection.per_row:
                    mask1 = lowest_in_rows(saliency, _share(cols, selection.sparsity, i1, i2))
                else:
                    k = _share(total, selection.sparsity, rows * i1, rows * i2)
                    mask1 = lowest_in_rows(saliency.reshape(-1), k).reshape(saliency.shape)
            else:
                mask1 = torch.zeros_like(w1, dtype=torch.bool)
            self._sweep(w1, q1, err1, h1, d1, mask1, pattern, count)
            w[:, i1:i2] = q1
            mask[:, i1:i2] = mask1
            w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
        return w.to(weight.dtype), mask

    def _factor(self, hessian: torch.Tensor, cols: int):
        """The inverse factor, reused when consecutive layers share their input (q/k/v, gate/up)."""
        cached = getattr(self, "_last", None)
        if cached is not None and cached[0].shape == hessian.shape and torch.equal(cached[0], hessian):
            return cached[1]
        factor = _inverse_factor(hessian, float(self.config["damp"]), cols)
        self._last = (hessian, factor)
        return factor

    @staticmethod
    def _sweep(w1, q1, err1, h1, d1, mask1, pattern, count) -> None:
        """Prune the block's columns left to right, pushing each error onto the columns after it."""
        for i in range(count):
            col = w1[:, i]
            if pattern is not None and i % pattern.m == 0:
                sal = w1[:, i : i + pattern.m] ** 2 / d1[i : i + pattern.m].reshape(1, -1) ** 2
                mask1[:, i : i + pattern.m] = lowest_in_rows(sal, pattern.n)
            q = col.masked_fill(mask1[:, i], 0.0)
            q1[:, i] = q
            e = (col - q) / d1[i]
            w1[:, i:] -= e.unsqueeze(1) * h1[i, i:].unsqueeze(0)
            err1[:, i] = e


def _share(n: int, sparsity: float, start: int, end: int) -> int:
    """Weights a sub-range [start, end) of n entries prunes so that the ranges add up to int(n·s)."""
    return int(sparsity * end) - int(sparsity * start) if n else 0


def _inverse_factor(hessian: torch.Tensor, damp: float, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper Cholesky factor of the damped H⁻¹, and the dead-input flags."""
    if hessian.shape != (cols, cols):
        raise ValueError(
            f"Hessian of shape {tuple(hessian.shape)} does not match a weight with {cols} inputs"
        )
    dead = torch.diag(hessian) == 0
    for dtype in (torch.float32, torch.float64):  # fp32 as usual; fp64 if damping was not enough
        h = hessian.to(dtype).clone()
        h[dead, dead] = 1.0
        h += damp * torch.diag(h).mean() * torch.eye(cols, dtype=dtype, device=h.device)
        try:
            hinv = torch.cholesky_inverse(torch.linalg.cholesky(h))
            return torch.linalg.cholesky(hinv, upper=True).float(), dead
        except torch.linalg.LinAlgError:
            continue
    raise ValueError("the damped Hessian is not positive definite even in fp64: raise `damp`")
