"""Sub-commands of the ``prunekit`` CLI beyond the built-in ``graph``/``prune``/``eval``.

Each module in this package is one sub-command, so adding a command is adding one file. A module
defines ``NAME`` (the sub-command), ``HELP`` (one line for ``prunekit --help``),
``add_arguments(parser)`` and ``run(args) -> int`` (the exit status). Modules are discovered by
name and imported lazily only for ``add_arguments``; heavy imports belong inside ``run``.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def discover() -> list[ModuleType]:
    """Every command module in this package, sorted by command name."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if all(hasattr(module, attr) for attr in ("NAME", "HELP", "add_arguments", "run")):
            found.append(module)
    return sorted(found, key=lambda m: m.NAME)
