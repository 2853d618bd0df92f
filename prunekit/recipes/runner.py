"""Running a recipe: calibration once, a dry resolution of every stage, then the stages in order.

Each stage is exactly one ``prunekit.prune`` call (the same :class:`~prunekit.spec.PruneSpec`) with the
same calibration token ids, so a recipe gives the same weights as the calls written out by hand. The ids are
sampled
once: later stages see them through the already-pruned earlier stages, as sequential pruning should.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..api import prune_with_spec
from ..data import calibration_ids
from ..engine.report import PruneReport
from ..spec import validate_calibration
from .check import check_recipe
from .schema import Recipe, Stage, load_recipe


def as_recipe(recipe: Recipe | str | Path) -> Recipe:
    """A parsed :class:`Recipe` as is, or a recipe file's path parsed and validated."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, (str, Path)):
        return load_recipe(recipe)
    raise TypeError(f"recipe must be a Recipe or the path of a YAML file, got {type(recipe).__name__}")


def recipe_calibration(
    model: torch.nn.Module, recipe: Recipe, calibration: Any = None, tokenizer: Any = None
) -> torch.Tensor | None:
    """The token ids every stage gets: ``calibration`` (ids, texts or a Dataset) if given, else sampled
    from the recipe's ``calibration`` section when a stage needs data (None when none does)."""
    spec = recipe.calibration
    if calibration is not None:
        opts = {
            "tokenizer": tokenizer,
            "n_samples": spec.n_samples,
            "seq_len": spec.seq_len,
            "seed": spec.seed,
        }
        return validate_calibration(calibration, model, opts)
    if not recipe.needs_calibration():
        return None
    if tokenizer is None:
        needy = [s.name for s in recipe.stages if s.needs_calibration()]
        raise ValueError(
            f"stage(s) {needy} need calibration data: pass tokenizer= (to sample the recipe's "
            "calibration section) or calibration= token ids"
        )
    ids = calibration_ids(
        tokenizer, n_samples=spec.n_samples, seq_len=spec.seq_len, seed=spec.seed, source=spec.data_source
    )
    return validate_calibration(ids, model)


def run_recipe(
    model: torch.nn.Module,
    recipe: Recipe | str | Path,
    calibration: Any = None,
    tokenizer: Any = None,
    progress: bool = False,
    after_stage: Callable[[Stage, PruneReport], None] | None = None,
) -> list[PruneReport]:
    """Apply a recipe's stages to ``model`` in place; one :class:`PruneReport` per stage.

    Everything is validated first: the recipe itself (keys, types, methods, options, patterns), the
    calibration, and every stage's targets on this model. A :class:`RecipeError` therefore leaves the
    model bit-identical. An error *during* a stage (for example NaN activations) is undone for that
    stage by ``prunekit.prune``, but the stages before it stay applied.

    ``calibration`` (token ids, texts or a Dataset) replaces the recipe's calibration section;
    otherwise ``tokenizer`` is needed when a stage reads activations. ``after_stage(stage, report)``
    is called after each stage (the CLI measures perplexity there); each report's options carry the
    stage name under ``"stage"``.
    """
    recipe = as_recipe(recipe)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_recipe(model, recipe)
    ids = recipe_calibration(model, recipe, calibration, tokenizer)
    reports = []
    for stage in recipe.stages:
        spec = dataclasses.replace(stage.spec, progress=progress)
        report = prune_with_spec(model, spec, ids)
        report.options["stage"] = stage.name
        reports.append(report)
        if after_stage is not None:
            after_stage(stage, report)
    return reports


__all__ = ["as_recipe", "recipe_calibration", "run_recipe"]
