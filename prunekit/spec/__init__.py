"""The typed, validated request every entry point builds: :class:`PruneSpec` via :func:`build_spec`.

:mod:`.options` is the option vocabulary (one table for Python, recipes and the command line),
:mod:`.request` the frozen value types, :mod:`.build` the validation, :mod:`.calibration` the checks of
calibration data against a model.
"""

from .build import build_spec, patterns, reads_statistics
from .calibration import needs_calibration, prepare_calibration, validate_calibration
from .options import KINDS, OPTIONS, TEXT_OPTIONS, Option, SpecError, SpecTypeError
from .request import (
    Calibration,
    GlobalSearch,
    LogisticSearch,
    OWLAllocation,
    PerLayerSearch,
    PruneSpec,
    Search,
    SemiStructured,
    Structured,
    UniformAllocation,
    UniformSearch,
    Unstructured,
    default_structure,
    scorer_class,
)

__all__ = [
    "KINDS",
    "OPTIONS",
    "TEXT_OPTIONS",
    "Calibration",
    "GlobalSearch",
    "LogisticSearch",
    "OWLAllocation",
    "Option",
    "PerLayerSearch",
    "PruneSpec",
    "Search",
    "SemiStructured",
    "SpecError",
    "SpecTypeError",
    "Structured",
    "UniformAllocation",
    "UniformSearch",
    "Unstructured",
    "build_spec",
    "default_structure",
    "needs_calibration",
    "patterns",
    "prepare_calibration",
    "reads_statistics",
    "scorer_class",
    "validate_calibration",
]
