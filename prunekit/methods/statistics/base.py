"""What every calibration statistic shares: its scope, its running sums, and the typed per-module result.

A statistic is a small frozen value object (a *declaration*: ``SquaredNorms()``, ``GradientNorms(scale=100)``)
that a scorer lists in its ``requires``. It says how it is gathered (:class:`Scope`) and owns its numerics:
:meth:`Statistic.terms` is what one hook call (a batch of inputs, or one sequence's gradient) adds to its
running sums, and :meth:`Statistic.finalise` turns the sums into the value scorers read. Because every
statistic is a sum of terms, the running sums are exactly what must be added across ranks (and across two
halves of a calibration set) before finalising; :class:`Accumulator` holds them for one module or parameter.

The engine runs the hooks and the collectives and never looks inside a statistic; scorers read the results
through :class:`ModuleStats`, keyed by statistic class.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import torch

V = TypeVar("V")


class Scope(enum.Enum):
    """How a statistic is gathered."""

    #: forward hooks while calibration data flows through one block at a time; terms get [tokens, features]
    BLOCK = "block"
    #: one backward pass per calibration sequence over the whole model; terms get a parameter's gradient
    MODEL = "model"


@dataclass(frozen=True)
class Statistic(Generic[V]):
    """Base class of every statistic; subclasses are frozen dataclasses (their fields are their settings)."""

    scope: ClassVar[Scope]
    #: a short name for messages
    label: ClassVar[str] = ""

    def terms(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """What one hook call adds to each running sum (fresh tensors, fp32 or fp64)."""
        raise NotImplementedError

    def finalise(self, sums: Sequence[torch.Tensor], count: int) -> V:
        """The value scorers read, from the sums over every rank (``count``: tokens, or sequences)."""
        raise NotImplementedError

    @classmethod
    def matrix_view(cls, value: V, features_on_rows: bool) -> V:
        """``value`` shaped to broadcast over a weight's 2-D view (identity unless per input feature)."""
        return value

    @classmethod
    def pool(cls, parts: Sequence[tuple[int, V]]) -> V | None:
        """One value from several calibration sets' ``(tokens, value)``; None where it cannot be pooled."""
        return None

    def __str__(self) -> str:
        return self.label or type(self).__name__


@dataclass(frozen=True)
class BlockStatistic(Statistic[V]):
    """Gathered by forward hooks, block by block: :meth:`terms` gets fp32 ``[tokens, features]`` inputs."""

    scope: ClassVar[Scope] = Scope.BLOCK


@dataclass(frozen=True)
class ModelStatistic(Statistic[V]):
    """Needs a full-model backward: :meth:`terms` gets one sequence's gradient of one parameter."""

    scope: ClassVar[Scope] = Scope.MODEL


def ordered(statistics: Iterable[Statistic]) -> list[Statistic]:
    """The statistics in one fixed order (sets of them iterate differently across processes, and every
    rank must hand the collectives the same tensors in the same order)."""
    return sorted(set(statistics), key=repr)


def of_scope(statistics: Iterable[Statistic], scope: Scope) -> frozenset[Statistic]:
    """The statistics gathered the way ``scope`` says."""
    return frozenset(s for s in statistics if s.scope is scope)


class Accumulator:
    """The running sums of one statistic for one module or parameter."""

    def __init__(self, statistic: Statistic) -> None:
        self.statistic = statistic
        self.sums: list[torch.Tensor] | None = None

    def add(self, x: torch.Tensor) -> None:
        terms = self.statistic.terms(x)
        if self.sums is None:
            self.sums = [t.clone() for t in terms]
        else:
            for total, term in zip(self.sums, terms):
                total += term

    def tensors(self) -> list[torch.Tensor]:
        """The sums to add across ranks, in place (none before the first :meth:`add`)."""
        return list(self.sums or [])

    def result(self, count: int) -> Any:
        """The finalised value, or None when nothing was added."""
        return None if self.sums is None else self.statistic.finalise(self.sums, count)


@dataclass(frozen=True)
class ModuleStats:
    """One module's finalised statistics, keyed by statistic class, with the counts they came from.

    Block statistics map to their value; full-model statistics map to ``{parameter attribute: value}``
    (``"weight"``, ``"bias"``, ``"A_log"``), since gradients belong to parameters rather than to inputs.
    """

    values: Mapping[type[Statistic], Any] = field(default_factory=dict)
    #: calibration tokens (rows of every ``[tokens, features]`` input) seen by the module
    n_tokens: int = 0
    #: calibration sequences seen by the module
    n_samples: int = 0

    def __contains__(self, kind: type[Statistic]) -> bool:
        return kind in self.values

    def __getitem__(self, kind: type[Statistic[V]]) -> V:
        return self.values[kind]

    def __iter__(self) -> Iterator[type[Statistic]]:
        return iter(self.values)

    def get(self, kind: type[Statistic[V]], default: Any = None) -> V | Any:
        return self.values.get(kind, default)

    def param(self, kind: type[Statistic[V]], attr: str) -> V | None:
        """A full-model statistic of the module's parameter ``attr``, or None."""
        return self.values.get(kind, {}).get(attr)

    def with_params(self, attr: str, values: Mapping[type[Statistic], Any]) -> ModuleStats:
        """A copy that also holds the full-model statistics ``values`` of parameter ``attr``."""
        merged = dict(self.values)
        for kind, value in values.items():
            merged[kind] = {**merged.get(kind, {}), attr: value}
        return ModuleStats(merged, self.n_tokens, self.n_samples)

    def for_matrix(self, features_on_rows: bool) -> ModuleStats:
        """A copy whose per-feature values broadcast over the weight's 2-D view: columns are the input
        features of a Linear, rows the channels of a depthwise Conv1d (``features_on_rows``)."""
        shaped = {kind: kind.matrix_view(value, features_on_rows) for kind, value in self.values.items()}
        return ModuleStats(shaped, self.n_tokens, self.n_samples)


def pooled(parts: Sequence[ModuleStats]) -> ModuleStats | None:
    """One module's statistics over several calibration sets (tasks): every statistic that can be pooled
    (:meth:`Statistic.pool`); None when none can."""
    kinds: dict[type[Statistic], None] = {}
    for st in parts:
        kinds.update(dict.fromkeys(st))
    values = {}
    for kind in kinds:
        value = kind.pool([(st.n_tokens, st[kind]) for st in parts if kind in st])
        if value is not None:
            values[kind] = value
    if not values:
        return None
    return ModuleStats(values, sum(st.n_tokens for st in parts), sum(st.n_samples for st in parts))


__all__ = [
    "Accumulator",
    "BlockStatistic",
    "ModelStatistic",
    "ModuleStats",
    "Scope",
    "Statistic",
    "of_scope",
    "ordered",
    "pooled",
]
