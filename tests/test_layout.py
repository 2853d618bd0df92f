"""The package's shape: imports flow one way, nobody imports another module's private names, and no
block of code is written twice.

The layer order is the one in ``prunekit/__init__.py``'s docstring: a module may import modules of its
own layer and of the layers before it, never of a layer after it. The duplicate check reads every
module as lines of token *shapes* (names, strings and numbers replaced by placeholders) and fails on
any six consecutive code lines that stand in two places, so a copy with renamed variables is caught
as well as a verbatim one. Imports, docstrings and lines of bare brackets are not code for this
purpose, and a run whose lines are nearly all of one shape (a column of ``add_argument`` calls) is a
list, not logic.
"""

from __future__ import annotations

import ast
import io
import keyword
import tokenize
from collections import defaultdict
from pathlib import Path

import prunekit

ROOT = Path(prunekit.__file__).resolve().parent

#: the layers, first to last; a module belongs to the first entry its dotted name starts with
LAYERS = [
    ("version", "data"),
    ("graph",),
    ("families",),
    ("io", "models"),
    ("methods",),
    ("spec",),
    ("engine",),
    ("eval",),
    ("api",),
    ("recipes",),
    ("experiments",),
    ("refmodels",),
    ("cli", "__main__"),
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(["prunekit", *parts])] = path
    return out


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) == 1:
        return None  # the package itself re-exports the public API from every layer
    for index, names in enumerate(LAYERS):
        if parts[1] in names:
            return index
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS and to prunekit's docstring")


def _imports(module: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, imported names, line) for every import of ``prunekit`` modules."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "prunekit":
                found.append((target, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "prunekit"]
    return found


def test_every_import_points_to_an_earlier_layer_or_its_own():
    modules = _modules()
    upward = []
    for module, path in modules.items():
        mine = _layer(module)
        for target, names, line in _imports(module, path):
            targets = [f"{target}.{n}" if f"{target}.{n}" in modules else target for n in names] or [target]
            for t in targets:
                theirs = _layer(t)
                if mine is not None and theirs is not None and theirs > mine:
                    upward.append(f"{path.relative_to(ROOT)}:{line} imports {t} (layer {theirs} > {mine})")
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def test_no_module_imports_another_modules_private_names():
    modules = _modules()
    private = []
    for module, path in modules.items():
        for target, names, line in _imports(module, path):
            for name in names:
                if name.startswith("_") and not name.startswith("__") and f"{target}.{name}" not in modules:
                    private.append(f"{path.relative_to(ROOT)}:{line} imports {target}.{name}")
                if name.startswith("_") and f"{target}.{name}" in modules and target != module:
                    private.append(f"{path.relative_to(ROOT)}:{line} imports the private module {name}")
    assert not private, "imports of private names:\n" + "\n".join(private)


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, shape) of each line that is code: names, strings and numbers become N, S, 0."""
    source = path.read_text(encoding="utf-8")
    shapes: dict[int, list[str]] = defaultdict(list)
    skip: set[int] = set()
    previous = tokenize.NEWLINE
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        kind, text, (row, _col) = tok.type, tok.string, tok.start
        if kind in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            previous = kind if kind in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT) else previous
            continue
        if kind == tokenize.STRING and previous in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            skip.update(range(row, tok.end[0] + 1))  # a docstring, or a string standing alone
        if kind == tokenize.NAME and text in ("import", "from") and previous != tokenize.OP:
            if not shapes[row]:
                skip.add(row)
        if kind == tokenize.NAME:
            shapes[row].append(text if keyword.iskeyword(text) else "N")
        elif kind == tokenize.NUMBER:
            shapes[row].append("0")
        elif kind == tokenize.STRING or kind == getattr(tokenize, "FSTRING_START", None):
            shapes[row].append("S")
        elif kind in (getattr(tokenize, "FSTRING_MIDDLE", None), getattr(tokenize, "FSTRING_END", None)):
            continue
        else:
            shapes[row].append(text)
        previous = kind
    lines = []
    for row in sorted(shapes):
        shape = " ".join(shapes[row])
        if row in skip or _thin(shapes[row]):
            continue
        lines.append((row, shape))
    return lines


def _thin(tokens: list[str]) -> bool:
    """A line with at most two names, values or keywords: one argument, one field, a closing bracket."""
    return sum(1 for t in tokens if t[:1].isalnum()) <= 2


def _declaration_rows(path: Path) -> set[int]:
    """Rows of imports and of class-level field declarations (``name: type = default``): lists of
    names, not logic."""
    rows = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        fields = (
            [n for n in node.body if isinstance(n, ast.AnnAssign)] if isinstance(node, ast.ClassDef) else []
        )
        for item in [node] if isinstance(node, (ast.Import, ast.ImportFrom)) else fields:
            rows.update(range(item.lineno, (item.end_lineno or item.lineno) + 1))
    return rows


def test_no_block_of_six_code_lines_is_written_twice():
    window = 6
    seen: dict[tuple[str, ...], tuple[str, int, int]] = {}
    repeats = []
    for path in sorted(ROOT.rglob("*.py")):
        declared = _declaration_rows(path)
        lines = [(row, shape) for row, shape in _code_lines(path) if row not in declared]
        name = str(path.relative_to(ROOT))
        for i in range(len(lines) - window + 1):
            run = lines[i : i + window]
            key = tuple(shape for _row, shape in run)
            if len(set(key)) <= 2:  # a column of one kind of line: a list, not logic
                continue
            first, last = run[0][0], run[-1][0]
            if key in seen:
                other, o_first, o_last = seen[key]
                if other != name or o_last < first:
                    repeats.append(f"{name}:{first}-{last} repeats {other}:{o_first}-{o_last}")
            else:
                seen[key] = (name, first, last)
    assert not repeats, "blocks written twice:\n" + "\n".join(repeats)
