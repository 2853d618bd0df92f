"""The recovery part of a sweep: every pruned point is recovered (:func:`prunekit.recover`) after it was
measured, then measured again on the same evaluation windows.

The request is validated once, before the model is loaded, with the same builder ``prunekit.recover``
uses, so a bad option fails the sweep at once instead of after the first pruned point. A point whose
recovery fails keeps its pruning numbers and gets ``recovery_error``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import api
from ..eval.perplexity import js_divergence, perplexity
from ..spec import SpecError
from ..spec.recovery import build_recovery_spec

#: columns a sweep with ``recover`` adds to every row (after :data:`prunekit.experiments.sweep.COLUMNS`)
RECOVERY_COLUMNS = ("ppl_recovered", "js_recovered", "recovery_share", "recovery_seconds", "recovery_error")
#: set by the sweep itself: its tokenizer, its text, its evaluation windows, its dense model
_SUPPLIED = ("tokenizer", "data", "eval_data", "dense", "eval_windows")


@dataclass(frozen=True)
class SweepRecovery:
    """A validated recovery request of a sweep: what each point passes to :func:`prunekit.recover`."""

    method: str = "perp"
    mode: str = "retrain"
    options: dict[str, Any] = field(default_factory=dict)

    def bind(
        self, dense: torch.nn.Module, tokenizer: Any, text: str | None, windows: torch.Tensor, batch_size: int
    ) -> Callable[[torch.nn.Module], dict[str, Any]]:
        """The sweep's :func:`recover_point` for one pruned model."""
        return functools.partial(
            recover_point, self, dense, tokenizer=tokenizer, text=text, windows=windows, batch_size=batch_size
        )

    def describe(self) -> str:
        """One line for the settings of ``sweep.md``."""
        given = ", ".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.method} {self.mode}" + (f" ({given})" if given else "")


def plan_recovery(recover: Mapping[str, Any] | None, seq_len: int, seed: int) -> SweepRecovery | None:
    """Validate the ``recover=`` of a sweep (its options and ``mode``; ``method`` too, default perp).

    Windows are cut with the sweep's ``seq_len`` and ``seed`` unless ``recover`` sets its own.

    Raises:
        SpecError: an unknown or bad option, named, or one the sweep supplies itself.
    """
    if recover is None:
        return None
    if not isinstance(recover, Mapping):
        raise SpecError(
            f"recover must be a dict of recovery options, got {type(recover).__name__}", "recover"
        )
    options = dict(recover)
    supplied = [key for key in _SUPPLIED if key in options]
    if supplied:
        raise SpecError(
            f"recover: {supplied[0]} is set by the sweep (its tokenizer, text, dense model and evaluation "
            "windows)",
            supplied[0],
        )
    method, mode = options.pop("method", "perp"), options.pop("mode", "retrain")
    options = {"seq_len": seq_len, "seed": seed, **options}
    build_recovery_spec(method, mode, **options, eval_windows=0)
    return SweepRecovery(method, mode, options)


def recover_point(
    plan: SweepRecovery,
    dense: torch.nn.Module,
    pruned: torch.nn.Module,
    tokenizer: Any,
    text: str | None,
    windows: torch.Tensor,
    batch_size: int,
) -> dict[str, Any]:
    """Recover ``pruned`` in place and measure it on ``windows``; the row's recovery columns."""
    try:
        report = api.recover(
            pruned,
            dense if plan.mode == "reconstruct" else None,
            plan.method,
            data=text,
            mode=plan.mode,
            tokenizer=tokenizer,
            eval_windows=0,  # measured below on the sweep's own windows
            **plan.options,
        )
        ppl = perplexity(pruned, windows, batch_size=batch_size)
        js = js_divergence(dense, pruned, windows, batch_size=batch_size)
    except Exception as err:  # noqa: BLE001 - a failed recovery keeps the point's pruning numbers
        return {"recovery_error": f"{type(err).__name__}: {err}"}
    return {
        "ppl_recovered": ppl,
        "js_recovered": js,
        "recovery_share": report.share,
        "recovery_seconds": report.seconds,
        "recovery_error": "",
    }


#: what the header, the separator and the dense row of the markdown table get after their last ``|``
RECOVERY_HEADER = (
    " recovered ppl | × dense | JS rec. | trained % | recovery s |",
    "---:|---:|---:|---:|---:|",
    " — | — | — | — | — |",
)


def recovery_cells(row: Mapping[str, Any], dense_ppl: float) -> str:
    """The recovery cells of one markdown row, after its last ``|`` (empty for a point without them)."""
    ppl = row.get("ppl_recovered")
    if ppl is None:
        return " | | | | |"
    return (
        f" {ppl:.3f} | {ppl / dense_ppl:.2f} | {row['js_recovered']:.4f} "
        f"| {100 * row['recovery_share']:.2f} | {row['recovery_seconds']:.1f} |"
    )


def recovery_errors(rows: list[dict[str, Any]]) -> list[str]:
    """One markdown bullet per point whose recovery failed."""
    return [
        f"- {r['method']} at {r['sparsity']:g}: recovery failed: {r['recovery_error']}"
        for r in rows
        if r.get("recovery_error")
    ]


def plot_recovered(ax: Any, points: list[tuple[float, float]], method: str, color: Any) -> None:
    """``method``'s perplexity after recovery on ``ax``, dashed in the colour of its pruned line."""
    if points:
        xs, ys = zip(*points)
        ax.plot(xs, ys, linestyle="--", marker="x", color=color, label=f"{method} after recovery")
