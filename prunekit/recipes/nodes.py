"""Reading a YAML document as a tree of nodes that remember their line, and the error that cites it.

A recipe is validated from ``yaml.compose`` nodes rather than from ``yaml.safe_load``'s plain dicts,
because a user who wrote a typo in a 60-line recipe should be told *where*: every check here has the
node at hand and puts ``node.start_mark.line + 1`` into the :class:`RecipeError`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode


class RecipeError(ValueError):
    """A recipe that cannot run: names the key (``stages[1].options.metric``), the line and the problem.

    Raised before anything is pruned, so the model is untouched when you see it.
    """

    def __init__(self, problem: str, key: str = "", line: int | None = None, file: str | None = None):
        self.problem, self.key, self.line, self.file = problem, key, line, file
        where = ":".join(str(x) for x in (file or "recipe", line) if x is not None)
        super().__init__(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")


def line_of(node: Node | None) -> int | None:
    """1-based line where ``node`` starts (PyYAML marks are 0-based)."""
    return None if node is None else node.start_mark.line + 1


@dataclass
class Ctx:
    """Where an error is reported: the recipe file's name (for messages) and the key path so far."""

    file: str | None
    key: str = ""

    def at(self, part: str | int) -> Ctx:
        if isinstance(part, int):
            return Ctx(self.file, f"{self.key}[{part}]")
        return Ctx(self.file, f"{self.key}.{part}" if self.key else part)

    def error(self, problem: str, node: Node | None) -> RecipeError:
        return RecipeError(problem, self.key, line_of(node), self.file)


def compose(text: str, file: str | None) -> Node:
    """The document's root node; YAML syntax errors become :class:`RecipeError` with their line."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = err.problem or str(err)
        if err.context and err.context_mark is not None and err.context_mark is not mark:
            problem += f" ({err.context} on line {err.context_mark.line + 1})"
        raise RecipeError(f"not valid YAML: {problem}", "", line, file) from err
    except yaml.YAMLError as err:
        raise RecipeError(f"not valid YAML: {err}", "", None, file) from err
    if root is None:
        raise RecipeError("the recipe is empty (it needs at least a 'stages' list)", "", 1, file)
    return root


def value(node: Node, ctx: Ctx) -> Any:
    """The Python value of a node, with YAML's safe types only (no arbitrary object tags)."""
    try:
        return SafeConstructor().construct_object(node, deep=True)
    except yaml.YAMLError as err:
        raise ctx.error(f"cannot read this value: {getattr(err, 'problem', None) or err}", node) from err


def mapping(
    node: Node, ctx: Ctx, allowed: Iterable[str], what: str, hidden: Iterable[str] = ()
) -> dict[str, tuple[Node, Node]]:
    """Key -> (key node, value node) of a mapping whose keys must all be in ``allowed`` or ``hidden``
    (accepted here so that the caller can explain them, but not offered in the unknown-key message).

    Duplicate keys are refused: YAML parsers silently keep the last one, which hides edits.
    """
    if not isinstance(node, MappingNode):
        raise ctx.error(f"{what} must be a mapping (key: value lines), got {describe(node)}", node)
    allowed, hidden = list(allowed), set(hidden)
    out: dict[str, tuple[Node, Node]] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, ScalarNode) or not isinstance(value(key_node, ctx), str):
            raise ctx.error(f"keys of {what} must be plain names, got {describe(key_node)}", key_node)
        key = key_node.value
        if key in out:
            first = line_of(out[key][0])
            raise ctx.at(key).error(f"duplicate key (first given on line {first})", key_node)
        if key not in allowed and key not in hidden:
            raise ctx.at(key).error(unknown_key(key, allowed, what), key_node)
        out[key] = (key_node, value_node)
    return out


def unknown_key(key: str, allowed: list[str], what: str) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {key!r} in {what}{hint}; allowed: {', '.join(sorted(allowed))}"


def sequence(node: Node, ctx: Ctx, what: str) -> list[Node]:
    if not isinstance(node, SequenceNode):
        raise ctx.error(f"{what} must be a list (lines starting with '- '), got {describe(node)}", node)
    return list(node.value)


def describe(node: Node) -> str:
    """How a node reads to a user: 'a mapping', 'a list', or the scalar's YAML type and text."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    kind = node.tag.rsplit(":", 1)[-1]
    return f"{kind} {node.value!r}" if node.value != "" else "nothing"


def string(node: Node, ctx: Ctx, what: str) -> str:
    v = value(node, ctx) if isinstance(node, ScalarNode) else None
    if not isinstance(v, str) or not v.strip():
        raise ctx.error(f"{what} must be a non-empty string, got {describe(node)}", node)
    return v


def number(node: Node, ctx: Ctx, what: str, lo: float, hi: float, hi_open: bool = False) -> float:
    """A real number in ``[lo, hi]`` (``[lo, hi)`` with ``hi_open``); booleans are not numbers."""
    v = value(node, ctx) if isinstance(node, ScalarNode) else None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ctx.error(f"{what} must be a number, got {describe(node)}", node)
    if not lo <= v <= hi or (hi_open and v == hi) or v != v:
        bracket = ")" if hi_open else "]"
        raise ctx.error(f"{what} must lie in [{lo}, {hi}{bracket}, got {v!r}", node)
    return v


def integer(node: Node, ctx: Ctx, what: str, lo: int, hi: int) -> int:
    v = value(node, ctx) if isinstance(node, ScalarNode) else None
    if isinstance(v, bool) or not isinstance(v, int):
        raise ctx.error(f"{what} must be an integer, got {describe(node)}", node)
    if not lo <= v <= hi:
        raise ctx.error(f"{what} must lie in [{lo}, {hi}], got {v}", node)
    return v


__all__ = ["Ctx", "RecipeError", "compose", "line_of", "mapping", "sequence", "string", "value"]
