"""Command-line flags generated from the option table, and the spec they build.

``prunekit prune`` (and ``prunekit sweep`` for the options every point shares) gets one flag per
pruner option in :data:`prunekit.spec.OPTIONS`, with the option's help and choices, so the command line
cannot drift from the Python API: a new option is a new flag without touching this package. Every flag
defaults to "not given", and :func:`spec_from_args` passes only the given ones to
:func:`prunekit.spec.build_spec`, which applies the same defaults and refusals as ``prunekit.prune``.
"""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from ..spec import OPTIONS, Option, PruneSpec, build_spec

_ON_OFF = {"on": True, "off": False}


def _ints_or_pair(text: str) -> int | tuple[int, int]:
    parts = [int(p) for p in text.split(",")]
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])


def _floats(text: str) -> list[float]:
    return [float(p) for p in text.split(",") if p.strip()]


def _settings(text: str) -> dict[str, Any]:
    """``first=2,last=1,k=0.5`` -> ``{"first": 2, "last": 1, "k": 0.5}`` (YAML scalars)."""
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected key=value pairs, got {part!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


#: options whose values are not one scalar: how a flag's text becomes the option's value
_PARSERS = {"layer_sparsity": _floats, "dense_blocks": _ints_or_pair, "logistic": _settings}


def _is_switch(option: Option) -> bool:
    """An option whose values are True / False (spelled on / off on the command line)."""
    choices = [c for c in option.choices or () if c is not None]
    return bool(choices) and all(isinstance(c, bool) for c in choices)


def _flag_kwargs(option: Option) -> dict[str, Any]:
    # choices are shown, not enforced here: the spec refuses a bad value with the message Python gives
    choices = [c for c in option.choices or () if c is not None]
    if _is_switch(option):
        return {"metavar": "{on,off}", "help": option.help}
    if choices:
        return {"metavar": "{" + ",".join(choices) + "}", "help": option.help}
    if option.name in _PARSERS:
        return {"type": _PARSERS[option.name], "help": option.help}
    integer = getattr(option.check, "integer", None)
    return {"type": int if integer else float if integer is not None else str, "help": option.help}


def add_option_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per command-line option of the table (its ``flag``), default "not given"."""
    group = parser.add_argument_group("pruning options (as prunekit.prune's keyword options)")
    flagged = [o for o in OPTIONS.values() if o.cli_flag is not None and o.name not in skip]
    for option in flagged:
        group.add_argument(option.cli_flag, dest=option.name, default=None, **_flag_kwargs(option))
    parser.set_defaults(option_flags=tuple(o.name for o in flagged))
    group.add_argument(
        "--method-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the method itself, e.g. metric=WIFN for flap (repeatable; YAML values)",
    )


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The pruner and method options given on the command line, as keyword options."""
    out = {}
    for name in args.option_flags:
        value = getattr(args, name)
        if value is not None:
            out[name] = _ON_OFF.get(value, value) if _is_switch(OPTIONS[name]) else value
    for item in args.method_option:
        out.update(_settings(item))
    return out


def spec_from_args(args: argparse.Namespace) -> PruneSpec:
    """The :class:`PruneSpec` of a ``prunekit prune`` command line."""
    return build_spec(
        args.method, args.sparsity, args.structure, args.targets, args.ignore, **given_options(args)
    )
