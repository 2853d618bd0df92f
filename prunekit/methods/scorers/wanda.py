"""Wanda (Sun et al. 2023): |W_ij| · ||X_j||₂, compared within each output row by default.

The optional alpha-search variant (from the same paper's appendix) prunes, in every row, the smallest
scores whose cumulative sum stays below ``alpha`` times the row's total, with ``alpha`` found by
bisection so that the matrix reaches the requested sparsity.
"""

from __future__ import annotations

import torch

from ..statistics import SquaredNorms, activation_norms
from .base import Scorer, register_scorer


@register_scorer
class Wanda(Scorer):
    name = "wanda"
    options = {"alpha_search": False}
    default_granularity = "row"

    def statistics(self):
        return (SquaredNorms(),)

    def weight_scores(self, weight, stats=None) -> torch.Tensor:
        if stats is None or SquaredNorms not in stats:
            raise ValueError("wanda needs activation statistics (squared norms) for every weight it scores")
        return weight.detach().abs().float() * activation_norms(stats)

    def prune_matrix(self, weight, stats, selection):
        if not self.config["alpha_search"] or selection.pattern is not None:
            return super().prune_matrix(weight, stats, selection)
        mask = alpha_search_mask(self.weight_scores(weight, stats), selection.sparsity)
        return weight.masked_fill(mask, 0.0), mask


def alpha_search_mask(scores: torch.Tensor, sparsity: float, tol: float = 1e-3) -> torch.Tensor:
    """Per-row cumulative-score threshold ``alpha`` · row sum, bisected to the target sparsity."""
    sorted_scores, order = torch.sort(scores, dim=-1, stable=True)
    cumulative = torch.cumsum(sorted_scores.double(), dim=-1)
    totals = cumulative[:, -1:]

    def mask_for(alpha: float) -> torch.Tensor:
        chosen_sorted = cumulative <= alpha * totals
        return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, order, chosen_sorted)

    lo, hi, alpha = 0.0, 1.0, 0.4
    mask = mask_for(alpha)
    for _ in range(60):
        current = float(mask.float().mean())
        if abs(current - sparsity) <= tol:
            break
        if current > sparsity:
            hi = alpha
        else:
            lo = alpha
        alpha = (lo + hi) / 2
        mask = mask_for(alpha)
    return mask
