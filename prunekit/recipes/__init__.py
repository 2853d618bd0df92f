"""YAML recipes: several pruning stages, their calibration and options, in one checked file.

A recipe says what a sequence of ``prunekit.prune`` calls would say (method, sparsity, structure,
targets/ignore, allocation, options) plus where calibration text comes from, in the vocabulary of
llm-compressor recipes. It is validated completely -- keys, types, methods, options, ``re:``
patterns, and every stage's targets on the actual model -- before the first weight changes, and
every error names the key and its line in the file. See ``docs/recipes.md`` for the format.

>>> recipe = load_recipe("examples/recipes/wanda_owl.yaml")          # doctest: +SKIP
>>> reports = run_recipe(model, recipe, tokenizer=tokenizer)          # doctest: +SKIP
"""

from .check import check_recipe
from .nodes import RecipeError
from .runner import as_recipe, recipe_calibration, run_recipe
from .schema import CalibrationSpec, Recipe, Stage, load_recipe, parse_recipe

__all__ = [
    "CalibrationSpec",
    "Recipe",
    "RecipeError",
    "Stage",
    "as_recipe",
    "check_recipe",
    "load_recipe",
    "parse_recipe",
    "recipe_calibration",
    "run_recipe",
]
