"""Layer-wise sparsity allocation: uniform, or OWL (outlier-weighted layer-wise sparsity).

OWL (Yin et al. 2023) gives blocks with many activation outliers a lower sparsity. A block's outlier
ratio D_l is the share of its Wanda scores |W|·||X|| larger than ``m`` times the block's mean score.
Ratios are min-max normalised, mapped to sparsities S - 2λ(r_l - 1/2) and then shifted by one constant
(found by bisection) and clipped to [S - λ, S + λ], so that the parameter-weighted mean sparsity over
the targeted weights equals the request exactly.

:class:`OWL` is what the engine runs: it names the registered scorer whose weight scores it counts
outliers on (by registry name, so allocation never imports a scorer) and the statistics it needs, and
turns each block's scores and size into the block's sparsity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from .statistics import SquaredNorms, Statistic


def outlier_ratio(scores: Sequence[torch.Tensor], m: float) -> float:
    """Share of scores above ``m`` times their mean (all of one block's targeted weights together)."""
    flat = torch.cat([s.reshape(-1).float() for s in scores])
    return float((flat > m * flat.mean()).double().mean())


def owl_sparsities(ratios: Sequence[float], sizes: Sequence[int], target: float, lam: float) -> list[float]:
    """Per-block sparsity in [target - lam, target + lam] whose size-weighted mean is ``target``."""
    if not 0 <= lam < 1:
        raise ValueError(f"OWL lambda must lie in [0, 1), got {lam}")
    d = torch.tensor(ratios, dtype=torch.float64)
    w = torch.tensor(sizes, dtype=torch.float64)
    span = float(d.max() - d.min())
    r = (d - d.min()) / span if span > 0 else torch.full_like(d, 0.5)
    base = target - 2 * lam * (r - 0.5)
    lo, hi = max(0.0, target - lam), min(0.999, target + lam)

    def mean_at(shift: float) -> torch.Tensor:
        s = (base + shift).clamp(lo, hi)
        return s, float((s * w).sum() / w.sum())

    a, b = -2.0, 2.0
    for _ in range(100):
        mid = (a + b) / 2
        if mean_at(mid)[1] < target:
            a = mid
        else:
            b = mid
    return [float(x) for x in mean_at((a + b) / 2)[0]]


@dataclass(frozen=True)
class OWL:
    """OWL's settings and its two steps: an outlier ratio per block, then the per-block sparsities.

    ``scorer`` is the registry name of the scorer whose :meth:`weight_scores` the outliers are counted
    on (Wanda's |W|·||X||, as in the paper); ``requires`` the statistics it needs for them, gathered in
    one dense block-wise pass together with whatever that scorer itself declares.
    """

    lam: float = 0.08
    m: float = 5.0
    scorer: str = "wanda"
    scorer_options: Mapping[str, object] = field(default_factory=dict)
    requires: frozenset[Statistic] = frozenset({SquaredNorms()})

    def outliers(self, scores: Sequence[torch.Tensor]) -> float:
        """One block's outlier ratio from the scores of all of its targeted weights (0 without any)."""
        return outlier_ratio(scores, self.m) if scores else 0.0

    def sparsities(
        self, ratios: Mapping[int, float], sizes: Mapping[int, int], target: float
    ) -> dict[int, float]:
        """Block index -> sparsity for every block with targeted weights (``sizes``: their count), so that
        the size-weighted mean is ``target``."""
        active = [i for i in sorted(sizes) if sizes[i]]
        alloc = owl_sparsities([ratios[i] for i in active], [sizes[i] for i in active], target, self.lam)
        return dict(zip(active, alloc))
