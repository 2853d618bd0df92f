"""The typed request of one pruning call: :class:`PruneSpec`, built and validated by :func:`build_spec`.

Python calls, recipes and the command line all end in :func:`build_spec`, so a request is checked in
one place, with one message per mistake, before any model is touched. A spec is frozen and compares by
value: the same request from any front end is the same spec.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..methods.scorers import SCORERS, Scorer, get_scorer
from ..methods.select import NM
from .options import OPTIONS, SpecError, SpecTypeError

# -- structures ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unstructured:
    """Single weights; ``granularity`` "matrix" compares a whole matrix, "row" each output row."""

    granularity: str = "matrix"
    kind = "unstructured"

    def __str__(self) -> str:
        return "unstructured"


@dataclass(frozen=True)
class SemiStructured:
    """N of every M consecutive weights of each row (N:M sparsity)."""

    pattern: NM
    kind = "N:M"

    def __str__(self) -> str:
        return str(self.pattern)


@dataclass(frozen=True)
class UniformSearch:
    """The same ratio of units from every group."""

    name = "uniform"


@dataclass(frozen=True)
class GlobalSearch:
    """One threshold over every group's comparable scores (FLAP's AL-AM)."""

    name = "global"


@dataclass(frozen=True)
class LogisticSearch:
    """SEAP's block schedule: a logistic curve over depth with dense first and last blocks."""

    first: int | None = None
    last: int | None = None
    k: float | None = None
    x0: float | None = None
    name = "logistic"

    def settings(self) -> dict[str, Any]:
        """The keyword arguments of :func:`prunekit.methods.budgets.logistic_ratios` that were given."""
        given = {"first": self.first, "last": self.last, "k": self.k, "x0": self.x0}
        return {k: v for k, v in given.items() if v is not None}


@dataclass(frozen=True)
class PerLayerSearch:
    """Given per-block ratios (``sparsity`` for blocks not listed)."""

    ratios: tuple[tuple[int, float], ...] = ()
    name = "per-layer"


Search = UniformSearch | GlobalSearch | LogisticSearch | PerLayerSearch


@dataclass(frozen=True)
class Structured:
    """Whole units (channels, heads) leave the model, which shrinks."""

    search: Search = UniformSearch()
    gqa: str = "heads"
    mode: str = "hard"
    #: None: the method's own choice (FLAP compensates)
    bias_compensation: bool | None = None
    refit: bool | None = None
    round_to: int = 1
    dense_blocks: tuple[int, int] | None = None
    kind = "structured"

    def __str__(self) -> str:
        return "structured"


Structure = Unstructured | SemiStructured | Structured

# -- allocation and calibration --------------------------------------------------------------------


@dataclass(frozen=True)
class UniformAllocation:
    """Every block gets the requested sparsity."""

    name = "uniform"


@dataclass(frozen=True)
class OWLAllocation:
    """OWL: blocks with more activation outliers get less sparsity (within ``lam`` of the request)."""

    lam: float = 0.08
    m: float = 5.0
    name = "owl"


Allocation = UniformAllocation | OWLAllocation


@dataclass(frozen=True)
class Calibration:
    """How calibration runs (``mode``, ``batch_size``) and how text is turned into windows."""

    #: "sequential" (statistics after the pruned blocks) or "dense"; None: the structured planner's pick
    mode: str | None = None
    batch_size: int = 8
    n_samples: int = 32
    seq_len: int = 256
    seed: int = 0
    text_column: str = "text"


# -- the request -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PruneSpec:
    """What one pruning call asks for, validated. Build it with :func:`build_spec`."""

    method: str
    sparsity: float
    structure: Structure
    allocation: Allocation = UniformAllocation()
    calibration: Calibration = Calibration()
    targets: tuple[str, ...] | None = None
    ignore: tuple[str, ...] | None = None
    #: the method's own options that were given, sorted by name
    method_options: tuple[tuple[str, Any], ...] = ()
    task: str | None = None
    task_weights: tuple[tuple[str, float], ...] | None = None
    #: how to run, not what: left out of comparisons
    progress: bool = field(default=False, compare=False)
    tokenizer: Any = field(default=None, compare=False, repr=False)

    @property
    def kind(self) -> str:
        """``"unstructured"``, ``"N:M"`` or ``"structured"``."""
        return self.structure.kind

    def scorer(self) -> Scorer:
        """A fresh scorer of the method with its options (scorers may cache per call)."""
        return get_scorer(self.method, **dict(self.method_options))

    def options(self) -> dict[str, Any]:
        """Every pruner option by name, as a flat dict (reports and records show these)."""
        s, cal, alloc = self.structure, self.calibration, self.allocation
        structured = isinstance(s, Structured)
        search = s.search if structured else None
        cls = scorer_class(self.method)
        return {
            "granularity": s.granularity if isinstance(s, Unstructured) else cls.default_granularity,
            "gqa": s.gqa if structured else OPTIONS["gqa"].default,
            "mode": s.mode if structured else OPTIONS["mode"].default,
            "progress": self.progress,
            "allocation": alloc.name,
            "owl_lambda": alloc.lam if isinstance(alloc, OWLAllocation) else OPTIONS["owl_lambda"].default,
            "owl_m": alloc.m if isinstance(alloc, OWLAllocation) else OPTIONS["owl_m"].default,
            "calibration_mode": cal.mode,
            "batch_size": cal.batch_size,
            "n_samples": cal.n_samples,
            "seq_len": cal.seq_len,
            "seed": cal.seed,
            "text_column": cal.text_column,
            "structure_search": search.name if search is not None else cls.default_structure_search,
            "layer_sparsity": dict(search.ratios) if isinstance(search, PerLayerSearch) else None,
            "task": self.task,
            "task_weights": dict(self.task_weights) if self.task_weights is not None else None,
            "logistic": search.settings() if isinstance(search, LogisticSearch) else {},
            "bias_compensation": s.bias_compensation if structured else None,
            "refit": s.refit if structured else None,
            "round_to": s.round_to if structured else OPTIONS["round_to"].default,
            "dense_blocks": s.dense_blocks if structured else None,
        }


def default_structure(method: str | Scorer | type[Scorer]) -> str:
    """The structure a call uses when none is given: ``"structured"`` for methods that can only remove
    whole units (FLAP, SEAP, Wanda-sp, ...), else ``"unstructured"``."""
    if isinstance(method, str):
        method = scorer_class(method)
    return "structured" if tuple(method.structures) == ("structured",) else "unstructured"


def scorer_class(method: Any) -> type[Scorer]:
    if not isinstance(method, str):
        raise SpecTypeError(f"method must be a string, got {type(method).__name__}", "method")
    if method not in SCORERS:
        raise SpecError(f"unknown method {method!r}; available: {', '.join(sorted(SCORERS))}", "method")
    return SCORERS[method]
