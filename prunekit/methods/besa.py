"""BESA's learnable row sparsities (Xu et al., ICLR 2024): the mathematics, without any model.

Every row (or block of ``row_block`` consecutive rows) of a weight matrix holds logits over candidate
sparsities ``1, 1 - step, ..., 0``. Their softmax ``p`` (of ``spread · sigmoid(logits)`` with ``smooth``,
as the paper's code does with spread 1, which keeps every row within a moderate range: see
:func:`smooth_range`) gives the row's expected sparsity
``p · candidates``. The weights of a row are ranked once by an importance score (rank 0 is the least
important); candidate ``c`` prunes the ``floor(D·c)`` lowest ranks of a row of ``D`` weights.

- Soft mask: the weight at rank ``j`` survives with probability ``1 - Σ_i p_i [j < floor(D·c_i)]``.
  The candidates are sorted, so the sum is a prefix of ``cumsum(p)``: one gather per matrix, no
  ``[candidates, D]`` product.
- Hard mask: the ``floor(s_row · D)`` lowest ranks of a row go (``rank >= count`` survives).
- Straight-through: ``hard + (soft - soft.detach())``, which is the hard mask exactly in the forward pass
  (``x - x`` is exactly zero) and the soft mask's gradient in the backward pass.

:func:`exact_counts` turns learned row sparsities into per-row counts whose total is exactly the
target, so the result meets the requested sparsity however far the training ended from it.
"""

from __future__ import annotations

import math

import torch


def candidate_count(step: float) -> int:
    """Number of steps between sparsity 0 and 1 (``1/step``); ``step`` must divide 1."""
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not 0.0 < step <= 1.0:
        raise ValueError(f"candidate step must be a number in (0, 1], got {step!r}")
    n = round(1.0 / step)
    if abs(n * step - 1.0) > 1e-6:
        raise ValueError(
            f"candidate step must divide 1 (1/step a whole number), got {step} (1/step = {1 / step:g})"
        )
    return n


def candidates(step: float) -> torch.Tensor:
    """The candidate sparsities, descending: ``1, 1 - step, ..., 0`` (float64, exact end points)."""
    n = candidate_count(step)
    return torch.arange(n, -1, -1, dtype=torch.float64) / n


def smooth_range(step: float, spread: float = 1.0) -> tuple[float, float]:
    """The expected sparsities a sigmoid-smoothed row can approach: softmax of values in (0, spread)
    weighs candidates within a factor e^spread of each other, so the extremes put that weight on one
    side of a threshold."""
    c = candidates(step)
    best_hi, best_lo, heavy = 0.0, 1.0, math.exp(spread)
    for t in range(1, len(c)):
        w = torch.ones_like(c)
        w[:t] = heavy  # the t highest candidates
        best_hi = max(best_hi, float((w * c).sum() / w.sum()))
        w = torch.ones_like(c)
        w[t:] = heavy  # the lowest ones
        best_lo = min(best_lo, float((w * c).sum() / w.sum()))
    return best_lo, best_hi


def probabilities(logits: torch.Tensor, smooth: bool, spread: float = 1.0) -> torch.Tensor:
    """``softmax(spread · sigmoid(logits))`` (``smooth``) or ``softmax(logits)`` over the last dim."""
    return (logits.sigmoid() * spread if smooth else logits).softmax(dim=-1)


def ranks(scores: torch.Tensor) -> torch.Tensor:
    """Each weight's rank within its row, 0 = lowest score (ties by position, as every selector)."""
    order = torch.sort(scores, dim=-1, stable=True).indices
    positions = torch.arange(scores.shape[-1], device=scores.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, positions)


def prefix_index(columns: int, cands: torch.Tensor) -> torch.Tensor:
    """For each rank ``j`` of a row of ``columns`` weights, the last candidate index ``i`` with
    ``j < floor(columns · c_i)`` (candidates descend, so those are a prefix; index 0 always qualifies)."""
    pruned = torch.floor(columns * cands + 1e-9).long()  # weights pruned under each candidate
    j = torch.arange(columns).unsqueeze(1)
    return (j < pruned.unsqueeze(0)).sum(dim=1) - 1


class RowSparsity(torch.nn.Module):
    """The learnable sparsity of one ``[rows, columns]`` matrix: logits per block of ``row_block`` rows.

    ``rank`` is the importance rank of every weight in its row (:func:`ranks`), fixed for the run.
    """

    def __init__(
        self,
        rank: torch.Tensor,
        step: float = 0.01,
        row_block: int = 1,
        smooth: bool = True,
        spread: float = 1.0,
    ) -> None:
        super().__init__()
        rows, columns = rank.shape
        if row_block < 1 or rows % row_block:
            raise ValueError(f"row_block {row_block} does not divide the matrix's {rows} rows")
        self.rows, self.columns, self.row_block = rows, columns, row_block
        self.smooth, self.spread = smooth, spread
        cands = candidates(step)
        self.register_buffer("cands", cands.float())
        self.register_buffer("rank", rank)
        self.register_buffer("prefix", prefix_index(columns, cands).to(rank.device))
        self.logits = torch.nn.Parameter(torch.zeros(rows // row_block, len(cands), device=rank.device))

    def probabilities(self) -> torch.Tensor:
        return probabilities(self.logits, self.smooth, self.spread)

    def block_sparsities(self) -> torch.Tensor:
        """Expected sparsity of every block of rows, ``p · candidates``."""
        return self.probabilities() @ self.cands

    def row_sparsities(self) -> torch.Tensor:
        return self.block_sparsities().repeat_interleave(self.row_block)

    def sparsity(self) -> torch.Tensor:
        """The matrix's expected sparsity (rows have equal length: the mean over rows)."""
        return self.block_sparsities().mean()

    def soft_mask(self) -> torch.Tensor:
        """Keep-probability of every weight (differentiable in the logits)."""
        keep_by_rank = 1.0 - self.probabilities().cumsum(dim=-1).index_select(-1, self.prefix)
        return keep_by_rank.repeat_interleave(self.row_block, dim=0).gather(1, self.rank)

    def hard_mask(self, counts: torch.Tensor | None = None) -> torch.Tensor:
        """1.0 where a weight is kept: the ``counts[r]`` lowest ranks of row ``r`` go (by default
        ``floor(s_row · columns)`` of the expected sparsities)."""
        if counts is None:
            counts = torch.floor(self.row_sparsities().detach() * self.columns + 1e-6).long()
        return (self.rank >= counts.unsqueeze(1)).to(self.logits.dtype)

    def mask(self) -> torch.Tensor:
        """Straight-through mask: the hard mask's values with the soft mask's gradient."""
        soft = self.soft_mask()
        return self.hard_mask() + (soft - soft.detach())


def block_sparsity(layers: list[RowSparsity]) -> torch.Tensor:
    """The parameter-weighted mean of the matrices' expected sparsities."""
    sizes = torch.tensor([float(r.rows * r.columns) for r in layers])
    values = torch.stack([r.sparsity() for r in layers])
    return (values * sizes.to(values)).sum() / sizes.sum()


def sparsity_penalty(current: torch.Tensor, target: float, beta: float) -> torch.Tensor:
    """``beta · ((s - s*) / s*)²``, BESA's pull towards the target."""
    return beta * ((current - target) / target) ** 2


def exact_counts(sparsities: list[torch.Tensor], columns: list[int], target: float) -> list[torch.Tensor]:
    """Per-row pruned counts, one tensor per matrix, whose total is ``int(target · weights)``.

    Every row's learned sparsity is shifted by one common amount ``tau`` (found by bisection), so the
    allocation's shape is kept, then rounded down; the few weights still missing go to the rows whose
    shifted count had the largest fractional part. Counts stay within ``[0, columns]``.
    """
    total = sum(int(s.numel()) * c for s, c in zip(sparsities, columns))
    want = int(target * total + 1e-9)
    s = [x.detach().double().cpu() for x in sparsities]

    def raw(tau: float) -> list[torch.Tensor]:
        return [((x + tau) * c).clamp(0, c) for x, c in zip(s, columns)]

    def pruned(tau: float) -> int:
        return int(sum(torch.floor(r + 1e-9).sum() for r in raw(tau)))

    lo, hi = -1.0, 1.0  # pruned(lo) = 0 <= want <= pruned(hi) = total
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if pruned(mid) <= want else (lo, mid)
    values = raw(lo)
    counts = [torch.floor(r + 1e-9) for r in values]
    missing = want - int(sum(c.sum() for c in counts))
    if missing > 0:
        room = torch.cat([torch.where(c < col, r - c, -1.0) for r, c, col in zip(values, counts, columns)])
        chosen = torch.topk(room, missing).indices  # missing < rows that can still grow, by bisection
        flat = torch.cat(counts)
        flat[chosen] += 1
        counts = list(flat.split([len(c) for c in counts]))
    return [c.long() for c in counts]
