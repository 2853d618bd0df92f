"""The recipe format: what each key means, which values it takes, and the parser that enforces it.

Everything that can be checked without a model is checked here, while the YAML nodes (and so the
line numbers) are at hand: the keys at every level, types, ranges, ``re:`` patterns, the method, its
structures and options. What needs the model (do the targets match anything?) is in
:mod:`prunekit.recipes.check`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode

from ..methods.scorers import SCORERS
from ..methods.select import NM, parse_structure
from ..models import KNOWN_MODELS
from ..spec import OPTIONS, PruneSpec, SpecError, build_spec, default_structure, needs_calibration
from .nodes import Ctx, RecipeError, compose, integer, line_of, mapping, number, sequence, string, value

TOP_KEYS = ("model", "calibration", "stages")
CALIBRATION_KEYS = ("source", "n_samples", "seq_len", "seed")
STAGE_KEYS = (
    "name",
    "method",
    "sparsity",
    "structure",
    "targets",
    "ignore",
    "allocation",
    "owl_lambda",
    "owl_m",
    "options",
)
LOGISTIC_KEYS = ("first", "last", "k", "x0")
DEFAULT_SOURCES = ("default", "pydoc")

_PLACES = {
    "stage": "the stage key '{name}'",
    "calibration": "the recipe's 'calibration' section",
}
#: pruner options a recipe spells elsewhere (or cannot express), with where they go instead
RESERVED_OPTIONS = {
    o.name: _PLACES[o.recipe].format(name=o.name) if o.recipe in _PLACES else o.why
    for o in OPTIONS.values()
    if o.recipe != "options"
}
#: the stage keys that are pruner options
STAGE_OPTIONS = tuple(o.name for o in OPTIONS.values() if o.recipe == "stage")


@dataclass(frozen=True)
class CalibrationSpec:
    """Where calibration windows come from: ``source`` is ``"default"`` (the stdlib docs) or a file."""

    source: str = "default"
    n_samples: int = 32
    seq_len: int = 256
    seed: int = 0

    @property
    def data_source(self) -> str | None:
        """The ``source=`` argument of :mod:`prunekit.data` functions."""
        return None if self.source in DEFAULT_SOURCES else self.source


@dataclass
class Stage:
    """One ``prunekit.prune`` call. ``lines`` maps keys (``"targets[0]"``) to their line in the file."""

    name: str
    method: str
    sparsity: float
    structure: str
    targets: list[str] | None = None
    ignore: list[str] | None = None
    allocation: str = "uniform"
    owl_lambda: float | None = None
    owl_m: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    index: int = 0
    lines: dict[str, int] = field(default_factory=dict, compare=False, repr=False)
    #: the validated request of this stage (the same :class:`PruneSpec` a Python call builds)
    spec: PruneSpec | None = field(default=None, compare=False, repr=False)

    @property
    def kind(self) -> str:
        """``"unstructured"``, ``"N:M"`` or ``"structured"``."""
        return "N:M" if isinstance(parse_structure(self.structure), NM) else self.structure

    def prune_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the equivalent ``prunekit.prune`` call (without model and calibration)."""
        kwargs: dict[str, Any] = {
            "method": self.method,
            "sparsity": self.sparsity,
            "structure": self.structure,
            "targets": self.targets,
            "ignore": self.ignore,
            **self.options,
        }
        if self.allocation != "uniform":
            kwargs["allocation"] = self.allocation
        for key in ("owl_lambda", "owl_m"):
            if getattr(self, key) is not None:
                kwargs[key] = getattr(self, key)
        return kwargs

    def needs_calibration(self) -> bool:
        return needs_calibration(self.spec)

    def line(self, key: str = "") -> int | None:
        return self.lines.get(key, self.lines.get(""))


@dataclass
class Recipe:
    stages: list[Stage]
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    model: str | None = None
    #: the file it came from (for messages), or None for text
    file: str | None = None

    def needs_calibration(self) -> bool:
        return any(stage.needs_calibration() for stage in self.stages)


def load_recipe(path: str | Path) -> Recipe:
    """Parse and validate a recipe file; relative calibration paths are resolved against its folder."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"no such recipe file: {path}", "", None, str(path))
    return parse_recipe(path.read_text(encoding="utf-8"), file=str(path), base_dir=path.parent)


def parse_recipe(text: str, file: str | None = None, base_dir: str | Path | None = None) -> Recipe:
    """Parse and validate recipe YAML text; raises :class:`RecipeError` naming the key and line.

    ``file`` only names the text in messages; relative paths in it (calibration ``source``, ``model``
    directories) start at ``base_dir``, or at the current directory when that is None.
    """
    root = compose(text, file)
    ctx = Ctx(file)
    top = mapping(root, ctx, TOP_KEYS, "the recipe")
    model = string(top["model"][1], ctx.at("model"), "model") if "model" in top else None
    if model is not None and model.lower() not in KNOWN_MODELS and base_dir is not None:
        path = Path(model).expanduser()
        model = str(path if path.is_absolute() else Path(base_dir) / path)  # like calibration files
    calibration = CalibrationSpec()
    if "calibration" in top and not _empty(top["calibration"][1]):
        calibration = _calibration(top["calibration"][1], ctx.at("calibration"), base_dir)
    if "stages" not in top:
        raise ctx.error("the recipe has no 'stages' list", root)
    nodes = sequence(top["stages"][1], ctx.at("stages"), "stages")
    if not nodes:
        raise ctx.at("stages").error("needs at least one stage", top["stages"][1])
    stages = [_stage(node, ctx.at("stages").at(i), i, calibration) for i, node in enumerate(nodes)]
    seen: dict[str, Stage] = {}
    for stage in stages:
        if stage.name in seen:
            raise RecipeError(
                f"stage name {stage.name!r} is already used by the stage on line {seen[stage.name].line()}",
                f"stages[{stage.index}].name",
                stage.line("name"),
                file,
            )
        seen[stage.name] = stage
    return Recipe(stages, calibration, model, file)


def _empty(node: Node) -> bool:
    """``options:`` with nothing after it (every entry commented out) means no options."""
    return isinstance(node, ScalarNode) and node.tag.endswith(":null")


def _calibration(node: Node, ctx: Ctx, base_dir: str | Path | None) -> CalibrationSpec:
    keys = mapping(node, ctx, CALIBRATION_KEYS, "calibration")
    out: dict[str, Any] = {}
    if "source" in keys:
        src_node = keys["source"][1]
        source = string(src_node, ctx.at("source"), "source")
        if source not in DEFAULT_SOURCES:
            path = Path(source).expanduser()
            if not path.is_absolute() and base_dir is not None:
                path = Path(base_dir) / path
            if not path.is_file():
                raise ctx.at("source").error(
                    f"{source!r} is neither 'default' (the Python docs shipped with the standard library) "
                    f"nor an existing text file (looked for {path}; relative paths start at the recipe's "
                    "folder). Dataset names are not fetched offline: pass texts or token ids to "
                    "run_recipe(calibration=...) instead",
                    src_node,
                )
            source = str(path)
        out["source"] = source
    limits = {"n_samples": (1, 1 << 20), "seq_len": (2, 1 << 20), "seed": (0, 1 << 62)}
    for key, (lo, hi) in limits.items():
        if key in keys:
            out[key] = integer(keys[key][1], ctx.at(key), key, lo, hi)
    return CalibrationSpec(**out)


def _stage(node: Node, ctx: Ctx, index: int, calibration: CalibrationSpec) -> Stage:
    """A stage's values as YAML gives them (keys, types, line numbers), then :func:`build_spec` for
    everything a Python call would be told too, with the same message, pointed at the key's line."""
    keys = mapping(node, ctx, STAGE_KEYS, "a stage")
    lines = {"": line_of(node)}
    lines.update({k: line_of(v) for k, (_kn, v) in keys.items()})

    def get(key: str) -> Node | None:
        return keys[key][1] if key in keys else None

    name = string(get("name"), ctx.at("name"), "name") if "name" in keys else f"stage{index + 1}"
    if "method" not in keys:
        raise ctx.error(f"every stage needs a 'method' ({', '.join(sorted(SCORERS))})", node)
    method = string(get("method"), ctx.at("method"), "method")
    scorer_cls = SCORERS.get(method)
    structure = _structure(get("structure"), ctx.at("structure"), scorer_cls)
    sparsity = _sparsity(get("sparsity"), ctx.at("sparsity"))
    stage = Stage(name, method, sparsity, structure, index=index, lines=lines)
    for key in ("targets", "ignore"):
        if key in keys:
            setattr(stage, key, _patterns(get(key), ctx.at(key), key, lines))
    if "allocation" in keys:
        stage.allocation = string(get("allocation"), ctx.at("allocation"), "allocation")
    for key in ("owl_lambda", "owl_m"):
        if key in keys:
            setattr(stage, key, number(get(key), ctx.at(key), key, float("-inf"), float("inf")))
    if "options" in keys and not _empty(get("options")) and scorer_cls is not None:
        stage.options = _options(get("options"), ctx.at("options"), stage, scorer_cls, lines)
    windows = {"n_samples": calibration.n_samples, "seq_len": calibration.seq_len, "seed": calibration.seed}
    try:
        stage.spec = build_spec(**stage.prune_kwargs(), **windows)
    except SpecError as err:
        where = _key_of(err.key, stage, keys)
        raise RecipeError(str(err), ctx.at(where).key, lines.get(where, lines[""]), ctx.file) from None
    if stage.sparsity is None:
        stage.sparsity = stage.spec.sparsity
    return stage


def _key_of(key: str, stage: Stage, keys: dict) -> str:
    """The recipe key a spec error is about: a stage key, ``options.<name>``, or the method line."""
    if key in stage.options:
        return f"options.{key}"
    if key in keys:
        return key
    return "method" if key else ""


def _structure(node: Node | None, ctx: Ctx, scorer_cls) -> str:
    if node is None:  # prunekit.prune's own default
        return default_structure(scorer_cls) if scorer_cls is not None else "unstructured"
    raw = None
    if isinstance(node, ScalarNode):
        v = value(node, ctx)
        # YAML 1.1 reads an unquoted 2:4 as the base-60 integer 124; the text is what was meant
        raw = v if isinstance(v, str) else node.value if isinstance(v, int) and ":" in node.value else None
    if raw is None:
        raise ctx.error("structure must be 'unstructured', 'structured' or 'N:M' like \"2:4\"", node)
    try:
        return str(parse_structure(raw.strip()))
    except ValueError as err:
        raise ctx.error(str(err), node) from err


def _sparsity(node: Node | None, ctx: Ctx) -> float | None:
    """A number, or None when left out (the spec requires it, or N:M fixes it)."""
    if node is None:
        return None
    return float(number(node, ctx, "sparsity", float("-inf"), float("inf")))


def _patterns(node: Node, ctx: Ctx, key: str, lines: dict) -> list[str]:
    """Names or ``re:`` patterns: one string or a non-empty list; each regex is compiled here."""
    items = [node] if isinstance(node, ScalarNode) else sequence(node, ctx, key)
    if not items:
        raise ctx.error(f"{key} is an empty list; leave the key out for the default", node)
    out = []
    for i, item in enumerate(items):
        ictx = ctx.at(i) if item is not node else ctx
        pattern = string(item, ictx, f"each {key} entry")
        if pattern.startswith("re:"):
            try:
                re.compile(pattern[3:])
            except re.error as err:
                raise ictx.error(f"invalid regular expression {pattern!r}: {err}", item) from err
        lines[f"{key}[{i}]"] = line_of(item)
        out.append(pattern)
    return out


def _options(node: Node, ctx: Ctx, stage: Stage, scorer_cls, lines: dict) -> dict[str, Any]:
    scorer_opts = dict(scorer_cls.options)
    allowed = [k for k in OPTIONS if k not in RESERVED_OPTIONS] + list(scorer_opts)
    for key_node, _value_node in node.value if isinstance(node, MappingNode) else []:
        others = sorted(n for n, c in SCORERS.items() if key_node.value in c.options and n != stage.method)
        if key_node.value not in allowed and others:
            raise ctx.at(key_node.value).error(
                f"{key_node.value} is an option of {', '.join(others)}, not of {stage.method!r} "
                f"(whose options are: {', '.join(sorted(scorer_opts)) or 'none'})",
                key_node,
            )
    keys = mapping(node, ctx, allowed, f"options of method {stage.method!r}", hidden=RESERVED_OPTIONS)
    out: dict[str, Any] = {}
    for key, (_key_node, vnode) in keys.items():
        kctx = ctx.at(key)
        lines[f"options.{key}"] = line_of(vnode)
        if key in RESERVED_OPTIONS:
            raise kctx.error(f"{key} is not a stage option here; use {RESERVED_OPTIONS[key]}", vnode)
        if key in scorer_opts:
            out[key] = _typed_like(vnode, kctx, key, scorer_opts[key])
        else:
            out[key] = _logistic(vnode, kctx) if key == "logistic" else value(vnode, kctx)
    return out


def _typed_like(node: Node, ctx: Ctx, key: str, default: Any) -> Any:
    """A method option must have its default's type (an int is fine where a float is expected)."""
    v = value(node, ctx)
    if isinstance(default, bool):
        ok = isinstance(v, bool)
    elif isinstance(default, int):
        ok = isinstance(v, int) and not isinstance(v, bool)
    elif isinstance(default, float):
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
    elif isinstance(default, str):
        ok = isinstance(v, str)
    else:
        ok = True
    if not ok:
        raise ctx.error(f"{key} must be a {type(default).__name__} like its default {default!r}", node)
    return float(v) if isinstance(default, float) else v


def _logistic(node: Node, ctx: Ctx) -> dict[str, Any]:
    keys = mapping(node, ctx, LOGISTIC_KEYS, "logistic")
    out: dict[str, Any] = {}
    for key in ("first", "last"):
        if key in keys:
            out[key] = integer(keys[key][1], ctx.at(key), key, 0, 1 << 16)
    for key in ("k", "x0"):
        if key in keys:
            out[key] = float(number(keys[key][1], ctx.at(key), key, -1e6, 1e6))
    return out


__all__ = ["CalibrationSpec", "Recipe", "Stage", "load_recipe", "parse_recipe"]
