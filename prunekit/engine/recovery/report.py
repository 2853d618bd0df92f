"""What a recovery call did: :class:`RecoveryReport`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RecoveryReport:
    """Trainable parameters, the loss curve, per-block errors (reconstruct) and held-out perplexity.

    ``losses`` is the training loss of every step (retrain) or of every block's last step (reconstruct);
    ``blocks`` maps each block to its relative squared error against the dense block before and after
    (reconstruct). Perplexities are None when no held-out windows were measured.
    """

    method: str
    mode: str
    options: dict[str, Any]
    trainable: int = 0
    #: "lora" / "lm_head" / "bias" / "norm" -> trainable parameters of that kind
    trainable_by_kind: dict[str, int] = field(default_factory=dict)
    params: int = 0
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    blocks: dict[str, dict[str, float]] = field(default_factory=dict)
    perplexity_before: float | None = None
    perplexity_after: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def share(self) -> float:
        """Trainable parameters as a share of the model's."""
        return self.trainable / self.params if self.params else 0.0

    def gap_recovered(self, dense_perplexity: float) -> float | None:
        """``(log ppl_before - log ppl_after) / (log ppl_before - log ppl_dense)``: 1 is all the way back."""
        if self.perplexity_before is None or self.perplexity_after is None:
            return None
        gap = math.log(self.perplexity_before) - math.log(dense_perplexity)
        return (math.log(self.perplexity_before) - math.log(self.perplexity_after)) / gap if gap > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "mode": self.mode,
            "options": {k: v for k, v in self.options.items() if _plain(v)},
            "trainable": self.trainable,
            "trainable_by_kind": dict(self.trainable_by_kind),
            "params": self.params,
            "share": self.share,
            "steps": self.steps,
            "tokens": self.tokens,
            "seconds": self.seconds,
            "losses": list(self.losses),
            "blocks": {k: dict(v) for k, v in self.blocks.items()},
            "perplexity_before": self.perplexity_before,
            "perplexity_after": self.perplexity_after,
            "notes": list(self.notes),
        }

    def summary(self) -> str:
        lines = [
            f"recovery {self.method} ({self.mode}, lora={self.options.get('lora')}): "
            f"{self.trainable:,} trainable parameters ({100 * self.share:.3f} % of {self.params:,}), "
            f"{self.steps} steps, {self.tokens:,} tokens, {self.seconds:.1f} s"
        ]
        if self.losses:
            lines.append(f"loss: first {self.losses[0]:.4f}, last {self.losses[-1]:.4f}")
        if self.blocks:
            before = sum(b["before"] for b in self.blocks.values()) / len(self.blocks)
            after = sum(b["after"] for b in self.blocks.values()) / len(self.blocks)
            lines.append(f"mean block error vs dense: {before:.4g} -> {after:.4g}")
        if self.perplexity_before is not None and self.perplexity_after is not None:
            lines.append(f"held-out perplexity: {self.perplexity_before:.3f} -> {self.perplexity_after:.3f}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str, list, tuple, dict))
