"""From scores to decisions: which weights (masks) or which units (structured) to remove.

All selectors remove the *lowest* scores and break ties by position (a stable sort), so results are
deterministic and exactly sized: ``int(n * sparsity)`` weights per matrix or per row, ``N`` of every
``M`` consecutive weights of a row for N:M.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..graph.groups import Group

GQA_POLICIES = ("heads", "groups")


@dataclass(frozen=True)
class NM:
    """Semi-structured pattern: ``n`` of every ``m`` consecutive weights along a row are pruned."""

    n: int
    m: int

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


def parse_structure(structure: str) -> str | NM:
    """``"unstructured"``, ``"structured"`` or an N:M pattern such as ``"2:4"`` (validated)."""
    if not isinstance(structure, str):
        raise TypeError(f"structure must be a string, got {type(structure).__name__}")
    if structure in ("unstructured", "structured"):
        return structure
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", structure)
    if not match:
        raise ValueError(
            f"structure must be 'unstructured', 'structured' or 'N:M' like '2:4', got {structure!r}"
        )
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise ValueError(f"N:M needs 0 < N < M, got {structure!r}")
    return NM(n, m)


def lowest_in_rows(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask (last dim) of the ``k`` lowest scores in every row; ties go to the lower index."""
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    # O(n) instead of a full sort: everything below the k-th value, then the first ties by index
    kth = torch.kthvalue(scores, k, dim=-1, keepdim=True).values
    below = scores < kth
    need = k - below.sum(dim=-1, keepdim=True)
    ties = scores == kth
    return below | (ties & (torch.cumsum(ties, dim=-1) <= need))


def unstructured_mask(scores: torch.Tensor, sparsity: float, per_row: bool = False) -> torch.Tensor:
    """Mask (True = prune) of ``int(n * sparsity)`` lowest scores per matrix, or per output row."""
    if per_row:
        rows = scores.reshape(scores.shape[0], -1)
        return lowest_in_rows(rows, int(rows.shape[1] * sparsity)).reshape(scores.shape)
    flat = scores.reshape(-1)
    return lowest_in_rows(flat, int(flat.numel() * sparsity)).reshape(scores.shape)


def nm_mask(scores: torch.Tensor, pattern: NM) -> torch.Tensor:
    """Mask (True = prune) of the ``n`` lowest scores in every block of ``m`` consecutive inputs."""
    rows = scores.reshape(scores.shape[0], -1)
    cols = rows.shape[1]
    if cols % pattern.m:
        raise ValueError(f"N:M {pattern} needs the input size to be a multiple of {pattern.m}, got {cols}")
    blocks = rows.reshape(rows.shape[0], cols // pattern.m, pattern.m)
    return lowest_in_rows(blocks, pattern.n).reshape(scores.shape)


@dataclass(frozen=True)
class Selection:
    """How many weights of one matrix go: a sparsity (per matrix or per row) or an N:M pattern."""

    sparsity: float
    pattern: NM | None = None
    per_row: bool = False

    def mask(self, scores: torch.Tensor) -> torch.Tensor:
        """True where a weight is pruned, for scores shaped like the (2-D) weight."""
        if self.pattern is not None:
            return nm_mask(scores, self.pattern)
        return unstructured_mask(scores, self.sparsity, per_row=self.per_row)


def budget(n: int, ratio: float) -> int:
    """Units removed from ``n`` at ``ratio``: ``int(n * ratio)``, as the reference code counts (never more
    than asked: 20 % of 9 heads is 1 head, of 1536 channels 307). The epsilon only absorbs float noise
    such as 0.29 * 100 = 28.999999999999996."""
    return int(n * ratio + 1e-9)


def units_to_drop(
    group: Group,
    scores: torch.Tensor,
    sparsity: float,
    gqa: str = "heads",
    strict: bool = False,
    uneven: bool = True,
) -> torch.Tensor:
    """Lowest-scoring ``budget(n, sparsity)`` units of one group (at least one unit kept).

    With ``strict`` a ratio that would remove every unit (of the group, or every KV group) is an error
    naming the group instead of being held back to one unit: used for ratios a user set per block.
    See :func:`lowest_units` for grouped heads and ``uneven``.
    """
    if gqa not in GQA_POLICIES:
        raise ValueError(f"gqa policy must be one of {GQA_POLICIES}, got {gqa!r}")
    grouped = bool(group.num_outer and group.num_outer != group.num_units)
    if grouped and gqa == "groups":
        k = _capped(group, budget(group.num_outer, sparsity), group.num_outer, sparsity, strict, "KV groups")
        return lowest_units(group, scores, k * group.units_per_outer, gqa, uneven)
    k = _capped(group, budget(group.num_units, sparsity), group.num_units, sparsity, strict, "units")
    return lowest_units(group, scores, k, gqa, uneven)


def lowest_units(
    group: Group, scores: torch.Tensor, k: int, gqa: str = "heads", uneven: bool = True
) -> torch.Tensor:
    """The ``k`` lowest-scoring units of ``group`` (sorted indices).

    Grouped heads (GQA, Mamba-2 B/C groups) follow ``gqa``: ``"heads"`` takes the ``k`` lowest query
    heads wherever they are (a KV group that loses all its query heads goes with them), or, when the
    family cannot run uneven groups (``uneven=False``), ``k // num_outer`` from every KV group; ``"groups"``
    takes ``k // units_per_outer`` whole KV groups, ranked by the sum of their heads' scores.
    """
    if scores.shape != (group.num_units,):
        raise ValueError(
            f"{group.name}: expected {group.num_units} unit scores, got shape {tuple(scores.shape)}"
        )
    k = max(0, min(int(k), group.num_units - 1))
    if group.num_outer and group.num_outer != group.num_units:
        per = group.units_per_outer
        grid = scores.reshape(group.num_outer, per)
        if gqa == "groups":
            outers = lowest_in_rows(grid.sum(1).double(), min(k // per, group.num_outer - 1))
            return torch.nonzero(outers.unsqueeze(1).expand(-1, per).reshape(-1)).flatten()
        if not uneven:
            return torch.nonzero(
                lowest_in_rows(grid, min(k // group.num_outer, per - 1)).reshape(-1)
            ).flatten()
    return torch.nonzero(lowest_in_rows(scores, k)).flatten()


def _capped(group: Group, k: int, total: int, sparsity: float, strict: bool, what: str) -> int:
    if k >= total and strict:
        raise ValueError(
            f"ratio {sparsity} would remove all {total} {what} of {group.name}; at least one must stay"
        )
    return min(k, total - 1)
