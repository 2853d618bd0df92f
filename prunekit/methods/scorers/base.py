"""The scorer interface and registry.

A scorer turns weights (and, for calibration-based methods, activation statistics) into importance
scores; higher means more important. It never sees model classes: the pruner hands it tensors and,
for structured pruning, a :class:`~prunekit.graph.groups.Group` with the member weights. Choosing
what to drop from the scores is the selector's job (:mod:`prunekit.methods.select`), so every scorer
gets unstructured, N:M and structured selection for free.

What a scorer reads from calibration is declared per instance, in ``requires`` (statistic instances
from :mod:`prunekit.methods.statistics`, chosen by :meth:`Scorer.statistics` from the scorer's options),
and handed to it as :class:`~prunekit.methods.statistics.ModuleStats`, keyed by statistic class.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from ...graph.groups import Group
from ..statistics import Hessian, ModuleStats, Statistic, relative_error

SCORERS: dict[str, type[Scorer]] = {}
#: a group's member weights by parameter name
Weights = Mapping[str, torch.Tensor]
#: the statistics of a group's modules, by module name (None: a weights-only scorer)
GroupStats = Mapping[str, ModuleStats] | None


def register_scorer(cls: type[Scorer]) -> type[Scorer]:
    """Class decorator: make a scorer available to ``prunekit.prune(method=cls.name)``."""
    if not cls.name or cls.name in SCORERS:
        raise ValueError(f"scorer name {cls.name!r} is empty or already registered")
    if "needs" in vars(cls):
        raise TypeError(
            f"scorer {cls.name!r} declares `needs`, which prunekit no longer reads: return its statistics "
            "from `statistics()` (instances from prunekit.methods.statistics, e.g. SquaredNorms())"
        )
    SCORERS[cls.name] = cls
    return cls


def get_scorer(name: str, **options) -> Scorer:
    if name not in SCORERS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(SCORERS))}")
    return SCORERS[name](**options)


class Scorer:
    """Base class. An instance's ``requires`` holds the calibration statistics it reads (empty: weights
    only); subclasses choose them in :meth:`statistics`."""

    name: str = ""
    #: which structures the scorer can rank for
    structures: tuple[str, ...] = ("unstructured", "N:M", "structured")
    #: structured pruning: "uniform" ratio per group or one "global" threshold (FLAP's AL-AM)
    default_structure_search: str = "uniform"
    #: structured pruning adds W[:, removed] · E[x_removed] to the consumers' biases by default
    compensates: bool = False
    #: structured statistics by default: of the dense model, or "sequential" after the pruned blocks
    structured_calibration: str = "dense"
    #: "matrix" compares all weights of a matrix, "row" each output row separately (unstructured)
    default_granularity: str = "matrix"
    #: option name -> default; unknown options are refused by ``prunekit.prune``
    options: dict[str, object] = {}
    #: the method learns each row's sparsity by reconstructing block outputs (BESA's executor runs it)
    learns_allocation: bool = False

    def __init__(self, **options) -> None:
        unknown = set(options) - set(self.options)
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise ValueError(
                f"method {self.name!r} has no option(s) {sorted(unknown)}; known options: {known}"
            )
        self.config = {**self.options, **options}
        #: the statistics this instance reads, fixed once its options are known
        self.requires: frozenset[Statistic] = frozenset(self.statistics())

    def statistics(self) -> Iterable[Statistic]:
        """The calibration statistics this scorer reads with its ``config`` (none: weights only).

        Called once by ``__init__``, after ``config`` is set and before a subclass's own checks, so it
        must not fail on an invalid option value (the subclass's ``__init__`` refuses that).
        """
        return ()

    def weight_scores(self, weight: torch.Tensor, stats: ModuleStats | None = None) -> torch.Tensor:
        """Importance of every entry of ``weight`` (same shape)."""
        raise NotImplementedError(f"{self.name} does not score individual weights")

    def prune_matrix(
        self, weight: torch.Tensor, stats: ModuleStats, selection
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prune one 2-D weight: returns ``(new_weight, mask)`` with ``mask`` True where pruned.

        The default zeroes the lowest :meth:`weight_scores` chosen by ``selection``
        (:class:`~prunekit.methods.select.Selection`). Methods that also update the kept weights
        (SparseGPT) override this.
        """
        mask = selection.mask(self.weight_scores(weight, stats))
        return weight.masked_fill(mask, 0.0), mask

    def layer_error(self, weight: torch.Tensor, pruned: torch.Tensor, stats: ModuleStats) -> float | None:
        """How much pruning changed the layer's output on calibration data, ||WX - ŴX||² / ||WX||², when
        the statistics can tell (an input Hessian was gathered); None otherwise."""
        hessian = stats.get(Hessian)
        return None if hessian is None else relative_error(weight, pruned, hessian)

    def unit_scores(self, group: Group, weights: Weights, stats: GroupStats = None) -> Tensor:
        """Importance of each of ``group.num_units`` units (float tensor of that length)."""
        raise NotImplementedError(f"{self.name} does not score structured groups")

    def comparable_unit_scores(self, group: Group, weights: Weights, stats: GroupStats = None) -> Tensor:
        """Unit scores on a scale shared by every group, for one threshold across groups (global search).

        The default z-scores :meth:`unit_scores` within the group; scorers that see finer parts of a unit
        (a head's channels) standardise those instead.
        """
        return zscore(self.unit_scores(group, weights, stats).double())


def zscore(values: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std (unbiased, as FLAP's code); a constant or single value stays centred at 0."""
    spread = values.std() if values.numel() > 1 else values.new_tensor(0.0)
    return (values - values.mean()) / (spread if spread > 0 else 1.0)


def unit_sum(group: Group, per_position: Mapping[tuple[str, int], torch.Tensor]) -> torch.Tensor:
    """Sum per-position quantities into per-unit totals.

    ``per_position[(param, dim)]`` holds one value per position along ``dim`` (the whole dim). Members
    shared by the heads of one outer unit (a KV head) spread their value evenly over those heads, so a
    KV group's score is the sum of its query heads' scores.
    """
    total = torch.zeros(group.num_units, dtype=torch.float64)
    per = group.units_per_outer
    for m in group.members:
        values = per_position[(m.param, m.dim)].double().cpu()[m.positions]  # unit totals live on the CPU
        if m.per_outer:
            outer = torch.zeros(group.num_outer, dtype=torch.float64).index_add_(0, m.units, values)
            total += outer.repeat_interleave(per) / per
        else:
            total.index_add_(0, m.units, values)
    return total
