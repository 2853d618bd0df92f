"""Several task-specific structured masks on one model, switched without reloading (SEAP).

Each task's plan (units to drop, bias deltas) is computed once from that task's calibration data;
switching applies it as a *soft* mask over the dense weights, which are kept aside, so any task (or
the blended generic mask) can be selected at any time and :meth:`TaskMasks.reset` brings the dense
model back exactly.
"""

from __future__ import annotations

from .snapshot import Snapshot
from .structured import StructuredDecision, apply_plan
from .structured_writes import consumers


class TaskMasks:
    """``masks.apply("code")`` → the model behaves as pruned for that task; ``masks.reset()`` → dense."""

    def __init__(self, model, adapter, graph, plans: dict[str | None, StructuredDecision]) -> None:
        self.model, self.adapter, self.graph, self.plans = model, adapter, graph, plans
        self.active: str | None = None
        names = [p for plan in plans.values() for g, _u in plan.decision for p in g.params]
        modules = [m.module for plan in plans.values() for g, _u in plan.decision for m in consumers(g)]
        self._dense = Snapshot(model, names, modules)
        self._applied = False

    @property
    def tasks(self) -> list[str]:
        return [t for t in self.plans if t is not None]

    def reset(self) -> None:
        """Restore the dense weights and biases (biases created by compensation are removed)."""
        self._dense.restore()
        self.active, self._applied = None, False

    def apply(self, task: str | None = None) -> None:
        """Switch to ``task``'s mask (``None``: the generic mask blended from all tasks)."""
        if task not in self.plans:
            raise ValueError(f"no mask for task {task!r}; available: {self.tasks} (None: generic)")
        self.reset()
        apply_plan(self.model, self.adapter, self.graph, self.plans[task], mode="soft")
        self.active, self._applied = task, True

    def removed(self, task: str | None) -> dict[str, list[int]]:
        return {g.name: u.tolist() for g, u in self.plans[task].decision}
