"""Dry resolution of a recipe against a model: every stage's targets, before stage 1 touches anything.

Each stage is resolved on the *unpruned* model. That is sound because pruning keeps module and group
names: structured pruning shrinks tensors but renames nothing, and masks change no shapes at all.
What structured pruning does change is row lengths, which matters to a later N:M stage (a row must
stay a multiple of M long); :func:`check_recipe` predicts that from the traced groups and the
``round_to`` option instead of finding out half-way through the recipe.
"""

from __future__ import annotations

import math

import torch

from ..api import trace
from ..engine.targets import group_targets, matches, weight_candidates, weight_targets
from ..families import get_adapter
from ..methods.budgets import logistic_ratios
from ..methods.select import NM, parse_structure
from ..methods.statistics import Scope, of_scope
from .nodes import RecipeError
from .schema import Recipe, Stage


def check_recipe(model: torch.nn.Module, recipe: Recipe) -> None:
    """Raise :class:`RecipeError` if any stage would fail to resolve on ``model``; changes nothing."""
    adapter = get_adapter(model)
    blocks = adapter.layers(model)
    block_names = [n for n, m in model.named_modules() if id(m) in {id(b) for b in blocks}]
    weights = weight_candidates(model)  # experts' per-expert and 3-D parameter names too
    graph = None
    #: module -> [(rows shrink by multiples of this, round_to can fix it, stage)] of earlier structured stages
    shrinks: dict[str, list[tuple[int, int, Stage]]] = {}
    for stage in recipe.stages:
        fail = _failer(recipe, stage)
        if stage.kind == "structured":
            if graph is None:
                graph = trace(model, adapter=adapter)
            groups = _resolve_groups(graph, adapter, stage, fail)
            _check_logistic(groups, stage, fail)
            if stage.spec.structure.mode == "hard" and stage.sparsity > 0:
                round_to = stage.spec.structure.round_to
                for module, (quantum, fixable) in _row_steps(model, groups, round_to).items():
                    shrinks.setdefault(module, []).append((quantum, fixable, stage))
        else:
            targeted = _resolve_weights(model, blocks, weights, stage, fail)
            _check_inside_blocks(targeted, block_names, stage, fail)
            pattern = parse_structure(stage.structure)
            if isinstance(pattern, NM):
                _check_nm(targeted, pattern, shrinks, stage, fail)


def _failer(recipe: Recipe, stage: Stage):
    def fail(problem: str, key: str = "") -> RecipeError:
        path = f"stages[{stage.index}]" + (f".{key}" if key else "")
        return RecipeError(f"stage {stage.name!r}: {problem}", path, stage.line(key), recipe.file)

    return fail


def _check_patterns(stage: Stage, names: list[str], keys: dict, fail) -> None:
    """Each pattern alone must match something, so the error can point at its own line."""
    for key in ("targets", "ignore"):
        for i, pattern in enumerate(getattr(stage, key) or []):
            if not any(matches(k, pattern) for n in names for k in keys.get(n, (n,))):
                raise fail(f"{key} pattern {pattern!r} matches nothing in this model", f"{key}[{i}]")


def _resolve_weights(model, blocks, weights, stage, fail) -> dict:
    _check_patterns(stage, weights, {}, fail)
    try:
        return weight_targets(model, blocks, stage.targets, stage.ignore)
    except (TypeError, ValueError) as err:
        raise fail(str(err), "ignore" if stage.ignore else "targets" if stage.targets else "") from err


def _resolve_groups(graph, adapter, stage, fail) -> list:
    keys = {f"{g.name}#{i}": (g.name, g.role) for i, g in enumerate(graph.groups)}
    _check_patterns(stage, list(keys), keys, fail)
    try:
        return group_targets(graph.groups, adapter.default_structured_roles, stage.targets, stage.ignore)
    except (TypeError, ValueError) as err:
        raise fail(str(err), "ignore" if stage.ignore else "targets" if stage.targets else "") from err


def _check_logistic(groups, stage: Stage, fail) -> None:
    search = stage.spec.structure.search
    if search.name != "logistic":
        return
    try:
        logistic_ratios(groups, stage.sparsity, **search.settings())
    except ValueError as err:
        key = "options.logistic" if "logistic" in stage.options else "sparsity"
        raise fail(str(err), key) from err


def _check_inside_blocks(targeted: dict, block_names: list[str], stage: Stage, fail) -> None:
    if not (of_scope(stage.spec.scorer().requires, Scope.BLOCK) or stage.spec.allocation.name == "owl"):
        return
    outside = sorted(n for n in targeted if not any(n.startswith(b + ".") for b in block_names))
    if outside:
        raise fail(
            f"method {stage.method!r} reads activations inside the blocks, but {', '.join(outside)} "
            "lies outside them (use ignore: or targets: to leave it out)",
            "targets" if stage.targets else "",
        )


def _row_steps(model: torch.nn.Module, groups, round_to: int) -> dict[str, tuple[int, bool]]:
    """Module -> (rows shrink in multiples of this many weights, whether ``round_to`` can fix it).

    Only members along a dimension >= 1 shorten rows (of the weight's 2-D view); removing output
    rows leaves them as they are. ``round_to`` keeps a multiple of that many units in channel groups
    only (as :func:`prunekit.engine.structured.round_kept` does); heads go one by one.
    """
    params = dict(model.named_parameters())
    steps: dict[str, tuple[int, bool]] = {}
    for group in groups:
        rounded = group.kind == "channels" and group.num_units > round_to
        for member in group.members:
            if member.attr != "weight" or member.dim < 1 or member.param not in params:
                continue
            shape = params[member.param].shape
            units = group.num_outer if member.per_outer else group.num_units
            width = max(1, len(member.positions) // max(1, units))
            width *= math.prod(s for d, s in enumerate(shape) if d >= 1 and d != member.dim)
            quantum = width * (round_to if rounded else 1)
            old, old_fixable = steps.get(member.module, (quantum, rounded))
            steps[member.module] = (math.gcd(old, quantum), old_fixable and rounded)
    return steps


def _check_nm(targeted: dict, pattern: NM, shrinks: dict, stage: Stage, fail) -> None:
    for name, mod in targeted.items():
        cols = mod.weight[0].numel()
        if cols % pattern.m:
            raise fail(
                f"N:M {pattern}: {name} has {cols} inputs per row, not a multiple of {pattern.m}", "structure"
            )
        for quantum, fixable, earlier in shrinks.get(name, []):
            if quantum % pattern.m == 0:
                continue
            round_to = earlier.spec.structure.round_to
            hint = (
                f"give that stage options: {{round_to: {math.lcm(round_to, pattern.m)}}}"
                if fixable
                else "leave that module out of one of the two stages (ignore:)"
            )
            raise fail(
                f"N:M {pattern} needs the rows of {name} to stay a multiple of {pattern.m} long, but stage "
                f"{earlier.name!r} (line {earlier.line()}) may shorten them by any multiple of {quantum}; "
                + hint,
                "structure",
            )


__all__ = ["check_recipe"]
