"""What a prune call did, per layer, in numbers a user can check."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class LayerRow:
    """One block (or ``(other)``: embeddings, final norm, untied head) before and after pruning."""

    name: str
    params_before: int
    params_after: int
    targeted: int = 0
    zeros: int = 0

    @property
    def sparsity(self) -> float:
        """Share of the targeted weights that are zero (masks) or of the block's parameters that left."""
        if self.targeted:
            return self.zeros / self.targeted
        return 1.0 - self.params_after / self.params_before if self.params_before else 0.0


@dataclass
class PruneReport:
    method: str
    structure: str
    sparsity: float
    rows: list[LayerRow]
    seconds: float = 0.0
    #: parameter name -> bool mask (True = pruned) for unstructured and N:M; MoE experts: one
    #: ``[experts, ...]`` mask per 3-D parameter, in its own orientation (see :mod:`.experts`)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    #: group name -> sorted removed unit indices for structured pruning
    removed: dict[str, list[int]] = field(default_factory=dict)
    #: groups the trace found but the family cannot shrink, with the reason
    skipped: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    #: module name -> relative reconstruction error ||WX - ŴX||² / ||WX||² (SparseGPT)
    errors: dict[str, float] = field(default_factory=dict)
    #: structured: block name -> role -> (units before, units after), e.g. heads or channels
    units: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)
    #: dense matmul FLOPs per token (2 x multiply-accumulates of every Linear/Conv1d), before and after;
    #: the attention score and value products, which grow with context, are not included
    flops_per_token: tuple[int, int] = (0, 0)
    #: consumer layers whose bias received structured-pruning compensation
    compensated: list[str] = field(default_factory=list)
    #: block index -> sparsity it received (differs per block with OWL)
    block_sparsity: dict[int, float] = field(default_factory=dict)
    #: structured: groups that lost fewer units than asked, and why (a family constraint, one unit kept)
    notes: list[str] = field(default_factory=list)

    @property
    def unit_totals(self) -> dict[str, tuple[int, int]]:
        """Structured: role -> (units before, units after) summed over blocks (heads, channels)."""
        totals: dict[str, tuple[int, int]] = {}
        for roles in self.units.values():
            for role, (before, after) in roles.items():
                b, a = totals.get(role, (0, 0))
                totals[role] = (b + before, a + after)
        return totals

    @property
    def layer_sparsity(self) -> dict[str, float]:
        """Unstructured and N:M: parameter name -> share of its entries pruned (where BESA or OWL put
        the sparsity, matrix by matrix)."""
        return {name: float(mask.float().mean()) for name, mask in self.masks.items()}

    @property
    def params_before(self) -> int:
        return sum(r.params_before for r in self.rows)

    @property
    def params_after(self) -> int:
        return sum(r.params_after for r in self.rows)

    @property
    def achieved(self) -> float:
        """Zero share of targeted weights (masks), or the share of block parameters removed (structured)."""
        targeted = sum(r.targeted for r in self.rows)
        if targeted:
            return sum(r.zeros for r in self.rows) / targeted
        blocks = [r for r in self.rows if r.name != "(other)"]
        before = sum(r.params_before for r in blocks)
        return 1.0 - sum(r.params_after for r in blocks) / before if before else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "structure": self.structure,
            "sparsity": self.sparsity,
            "achieved": self.achieved,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "seconds": self.seconds,
            "options": {k: v for k, v in self.options.items() if isinstance(v, (int, float, str, bool))},
            "layers": [
                {
                    "name": r.name,
                    "params_before": r.params_before,
                    "params_after": r.params_after,
                    "targeted": r.targeted,
                    "zeros": r.zeros,
                    "sparsity": r.sparsity,
                }
                for r in self.rows
            ],
            "removed": self.removed,
            "errors": self.errors,
            "units": {row: {k: list(v) for k, v in roles.items()} for row, roles in self.units.items()},
            "unit_totals": {role: list(v) for role, v in self.unit_totals.items()},
            "notes": list(self.notes),
            "flops_per_token": list(self.flops_per_token),
            "block_sparsity": self.block_sparsity,
            "layer_sparsity": self.layer_sparsity,
        }

    def __str__(self) -> str:
        head = (
            f"prunekit {self.method} · {self.structure} · requested {self.sparsity:.3f} · "
            f"achieved {self.achieved:.4f} · {self.seconds:.1f} s"
        )
        cols = ("layer", "params before", "params after", "targeted", "zeros", "sparsity")
        body = [
            (
                r.name,
                f"{r.params_before:,}",
                f"{r.params_after:,}",
                f"{r.targeted:,}",
                f"{r.zeros:,}",
                f"{r.sparsity:.4f}",
            )
            for r in self.rows
        ]
        total_t = sum(r.targeted for r in self.rows)
        body.append(
            (
                "total",
                f"{self.params_before:,}",
                f"{self.params_after:,}",
                f"{total_t:,}",
                f"{sum(r.zeros for r in self.rows):,}",
                f"{self.achieved:.4f}",
            )
        )
        widths = [max(len(c), *(len(row[i]) for row in body)) for i, c in enumerate(cols)]
        fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
        lines = [head, fmt.format(*cols), fmt.format(*("-" * w for w in widths))]
        lines += [fmt.format(*row) for row in body]
        if self.units:
            lines.append("units per block (before → after):")
            for row, roles in self.units.items():
                lines.append(f"  {row}: " + ", ".join(f"{role} {a}→{b}" for role, (a, b) in roles.items()))
            lines.append(
                "units in total: "
                + ", ".join(
                    f"{role} {b}→{a} ({1 - a / b:.1%} removed)"
                    for role, (b, a) in self.unit_totals.items()
                    if b
                )
            )
        for note in self.notes:
            lines.append(f"note: {note}")
        if self.flops_per_token[0]:
            before, after = self.flops_per_token
            lines.append(
                f"matmul FLOPs per token: {before / 1e6:.1f}M → {after / 1e6:.1f}M ({after / before:.3f}×)"
            )
        if self.skipped:
            lines.append(f"{len(self.skipped)} group(s) not prunable in this family (see report.skipped)")
        return "\n".join(lines)

    __repr__ = __str__


def count_params(model: torch.nn.Module, layer_names: list[str]) -> dict[str, int]:
    """Parameter count per block name, plus ``(other)``; tied weights count once."""
    counts = {name: 0 for name in layer_names}
    counts["(other)"] = 0
    seen = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        row = next((ln for ln in layer_names if name.startswith(ln + ".")), "(other)")
        counts[row] += p.numel()
    return counts


def short_layer_name(name: str) -> str:
    for prefix in ("model.", "backbone.", "transformer."):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def matmul_flops(model: torch.nn.Module) -> int:
    """2 x the multiply-accumulates per token of every Linear and Conv1d (tied weights count per use).

    Zeroed weights still count: dense kernels multiply them. The embedding lookup costs nothing."""
    total = 0
    for mod in model.modules():
        if isinstance(mod, torch.nn.Linear):
            total += 2 * mod.weight.numel()
        elif isinstance(mod, torch.nn.Conv1d):
            total += 2 * mod.weight.numel()
    return total
