"""The option vocabulary of a pruning call, in one table.

Every entry point reads this table: :func:`prunekit.prune` and the other Python calls validate keyword
options with it, recipes validate their ``options:`` and stage keys with it, and the ``prunekit prune``
command generates its flags from it, so the three can never disagree on a name, a default, a range or
the structures an option applies to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class SpecError(ValueError):
    """A request that cannot run, raised before anything is touched. ``key`` names what is wrong
    (``"sparsity"``, ``"structure"``, an option name), so recipes can point at its line."""

    def __init__(self, problem: str, key: str = "") -> None:
        super().__init__(problem)
        self.key = key


class SpecTypeError(SpecError, TypeError):
    """A value of the wrong type (a string where a number belongs, say)."""


KINDS = ("unstructured", "N:M", "structured")


def choice(*allowed: Any) -> Callable[[str, Any], Any]:
    def check(key: str, value: Any) -> Any:
        if value not in allowed:
            raise SpecError(f"option {key}={value!r} is not one of {allowed}", key)
        return value

    check.choices = allowed  # type: ignore[attr-defined]
    return check


def number(lo: float, hi: float, integer: bool = False) -> Callable[[str, Any], Any]:
    def check(key: str, value: Any) -> Any:
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok or not lo <= value <= hi:
            kind = "an integer" if integer else "a number"
            raise SpecError(f"option {key} must be {kind} in [{lo}, {hi}], got {value!r}", key)
        return value

    check.integer = integer  # type: ignore[attr-defined]
    return check


def anything(_key: str, value: Any) -> Any:
    return value


def layer_ratios(key: str, value: Any) -> dict[int, float]:
    """``{block index: ratio}`` or one ratio per block; ratios in [0, 1] (1 is refused later, by name)."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        raise SpecTypeError(
            f"{key} must be a list of per-block ratios or a {{block index: ratio}} dict, got {value!r}", key
        )
    out = {}
    for index, ratio in items:
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise SpecError(f"{key}: block index must be a non-negative int, got {index!r}", key)
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) <= 1.0:
            raise SpecError(f"{key}[{index}] must be a number in [0, 1], got {ratio!r}", key)
        out[index] = float(ratio)
    return out


def block_pair(key: str, value: Any) -> tuple[int, int]:
    """``k`` (the first and the last ``k`` blocks) or ``(first, last)``, non-negative ints."""
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in pair)
    ):
        raise SpecError(
            f"option {key} must be an int or a (first, last) pair of ints >= 0, got {value!r}", key
        )
    return (pair[0], pair[1])


LOGISTIC_KEYS = ("first", "last", "k", "x0")


def logistic_settings(key: str, value: Any) -> dict[str, Any]:
    """SEAP's schedule: ``first``/``last`` dense blocks (ints), steepness ``k`` and midpoint ``x0``."""
    if not isinstance(value, dict):
        raise SpecTypeError(f"option {key} must be a dict with keys {LOGISTIC_KEYS}, got {value!r}", key)
    unknown = sorted(set(value) - set(LOGISTIC_KEYS))
    if unknown:
        raise SpecError(f"option {key} has unknown keys {unknown}; allowed: {', '.join(LOGISTIC_KEYS)}", key)
    out: dict[str, Any] = {}
    for name, v in value.items():
        whole = name in ("first", "last")
        check = number(0, 1 << 16, integer=True) if whole else number(-1e6, 1e6)
        check(f"{key}.{name}", v)
        out[name] = int(v) if whole else float(v)
    return out


@dataclass(frozen=True)
class Option:
    """One pruner option: its default, its check, where it applies, and how each front end spells it.

    ``kinds`` are the structures it applies to (given elsewhere it is an error naming it); ``needs`` is
    ``(other option, value)`` it only makes sense with. ``flag`` is the ``prunekit prune`` flag (None:
    not a command-line option, ``why`` says where it goes instead); ``recipe`` is where a recipe puts it:
    ``"options"`` (a stage's ``options:`` mapping), ``"stage"`` (a key of the stage itself),
    ``"calibration"`` (the recipe's calibration section) or None (``why`` says why not).
    """

    name: str
    default: Any
    check: Callable[[str, Any], Any]
    help: str
    kinds: tuple[str, ...] = KINDS
    needs: tuple[str, Any] | None = None
    flag: str | None = ""
    recipe: str | None = "options"
    why: str = ""

    @property
    def cli_flag(self) -> str | None:
        return None if self.flag is None else self.flag or "--" + self.name.replace("_", "-")

    @property
    def choices(self) -> tuple | None:
        return getattr(self.check, "choices", None)


_OPTIONS = [
    Option("granularity", None, choice(None, "matrix", "row"),
           "compare all weights of a matrix, or each output row (default: the method's)",
           kinds=("unstructured",)),
    Option("allocation", "uniform", choice("uniform", "owl"),
           "per-block sparsity: the same everywhere, or OWL's outlier-weighted one",
           kinds=("unstructured",), recipe="stage"),
    Option("owl_lambda", 0.08, number(0.0, 0.99), "OWL: the largest deviation from the requested sparsity",
           kinds=("unstructured",), needs=("allocation", "owl"), recipe="stage"),
    Option("owl_m", 5.0, number(0.0, 1e6), "OWL: outliers are scores above this many times the mean",
           kinds=("unstructured",), needs=("allocation", "owl"), recipe="stage"),
    Option("gqa", "heads", choice("heads", "groups"),
           "grouped-query attention: the same number of query heads per KV group, or whole KV groups",
           kinds=("structured",)),
    Option("mode", "hard", choice("hard", "soft"), "remove the units (hard) or zero them (soft)",
           kinds=("structured",)),
    Option("structure_search", None, choice(None, "uniform", "global", "logistic", "per-layer"),
           "how many units each group loses: one ratio, one global threshold, SEAP's logistic block "
           "schedule, or per-block ratios (default: the method's)", kinds=("structured",)),
    Option("layer_sparsity", None, layer_ratios,
           "per-block ratios (one per block, or {block: ratio}); means structure_search='per-layer'",
           kinds=("structured",)),
    Option("logistic", None, logistic_settings,
           "SEAP's schedule: {first, last, k, x0}", kinds=("structured",),
           needs=("structure_search", "logistic")),
    Option("bias_compensation", None, choice(None, True, False),
           "fold the removed channels' mean contribution into the biases (default: the method's)",
           kinds=("structured",)),
    Option("refit", None, choice(None, True, False),
           "least-squares refit of each shrunk consumer's kept columns and bias", kinds=("structured",)),
    Option("round_to", 1, number(1, 1 << 16, integer=True), "keep a multiple of this many channels",
           kinds=("structured",)),
    Option("dense_blocks", None, block_pair,
           "k or (first, last): those blocks stay dense; the requested share comes from the others",
           kinds=("structured",)),
    Option("task", None, anything, "pick one task's mask of a {task: data} calibration",
           kinds=("structured",), flag=None, recipe=None,
           why="task-specific calibration is a {task: data} dict: a direct prunekit.prune call"),
    Option("task_weights", None, anything, "blend weights of the tasks of a {task: data} calibration",
           kinds=("structured",), flag=None, recipe=None,
           why="task-specific calibration is a {task: data} dict: a direct prunekit.prune call"),
    Option("calibration_mode", None, choice(None, "sequential", "dense"),
           "statistics after the pruned blocks, or of the dense model (default: the method's)"),
    Option("batch_size", 8, number(1, 1 << 20, integer=True), "calibration sequences per forward pass"),
    Option("n_samples", 32, number(1, 1 << 20, integer=True), "calibration windows drawn from text",
           flag="--calib-samples", recipe="calibration"),
    Option("seq_len", 256, number(2, 1 << 20, integer=True), "tokens per calibration window",
           recipe="calibration"),
    Option("seed", 0, number(0, 1 << 62, integer=True), "seed of the calibration windows",
           recipe="calibration"),
    Option("text_column", "text", anything, "the text column of a datasets.Dataset calibration",
           flag=None, recipe=None, why="run_recipe(calibration=...) (recipes calibrate on text files)"),
    Option("tokenizer", None, anything, "tokenizes text calibration", flag=None, recipe=None,
           why="run_recipe(tokenizer=...) (the CLI loads the model's own)"),
    Option("progress", False, choice(False, True), "progress bars", flag=None, recipe=None,
           why="run_recipe(progress=...) (the CLI always shows progress)"),
]  # fmt: skip

#: name -> :class:`Option`, in the order above
OPTIONS: dict[str, Option] = {o.name: o for o in _OPTIONS}

#: options that only shape how text calibration is tokenized and sampled
TEXT_OPTIONS = ("n_samples", "seq_len", "seed", "text_column", "tokenizer")
