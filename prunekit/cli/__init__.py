"""The ``prunekit`` command line: one module per sub-command in this package.

Adding a command is adding one module that defines ``NAME`` (the sub-command), ``HELP`` (one line for
``prunekit --help``), ``add_arguments(parser)`` and ``run(args) -> int`` (the exit status). Modules are
discovered by name; heavy imports belong inside ``run`` so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from types import ModuleType

from ..engine.distributed import PeerFailedError


def commands() -> list[ModuleType]:
    """Every command module in this package, sorted by command name."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if all(hasattr(module, attr) for attr in ("NAME", "HELP", "add_arguments", "run")):
            found.append(module)
    return sorted(found, key=lambda m: m.NAME)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunekit", description="Prune Hugging Face causal LMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in commands():
        command = sub.add_parser(module.NAME, help=module.HELP, description=module.__doc__)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args._run(args)
    except (ValueError, TypeError, ImportError) as err:
        print(f"prunekit: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        if not isinstance(err, PeerFailedError):
            raise
        print(f"prunekit: error: {err}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
