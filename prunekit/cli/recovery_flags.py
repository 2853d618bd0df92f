"""Command-line spellings of the recovery options, generated from :data:`RECOVERY_OPTIONS`.

``prunekit recover`` gets one flag per option (``--rank 4 --lora mask --train norms,lora``) and
``prunekit sweep --recover`` takes the same options as one ``key=value`` list
(``mode=retrain,steps=8,rank=2``). Both parse a value by the type of the option's default, so a new
option in the table is a new flag without touching this package, and both leave every range check to
:func:`prunekit.spec.recovery.build_recovery_spec`, which gives the same message as ``prunekit.recover``.
"""

from __future__ import annotations

import argparse
import functools
from typing import Any

from ..spec.recovery import RECOVERY_OPTIONS
from .common import names

#: options whose default (None) does not tell the type of their value
_KINDS: dict[str, type] = {
    "train": list,
    "lora_targets": list,
    "alpha": float,
    "steps": int,
    "tokens": int,
    "epochs": int,
    "batch_size": int,
    "n_samples": int,
}
_SWITCH = {
    **dict.fromkeys(("on", "true", "yes", "1"), True),
    **dict.fromkeys(("off", "false", "no", "0"), False),
}


def option_kind(name: str) -> type | None:
    """The type of option ``name``'s values: list, bool, int, float, str, or None when unknown."""
    if name in _KINDS:
        return _KINDS[name]
    default = RECOVERY_OPTIONS[name][0] if name in RECOVERY_OPTIONS else None
    return None if default is None else type(default)


def literal(text: str) -> Any:
    """``"8"`` -> 8, ``"5e-4"`` -> 0.0005, ``"on"`` -> True, ``"none"`` -> None, anything else as text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    lowered = text.strip().lower()
    if lowered in ("none", "null"):
        return None
    return _SWITCH.get(lowered, text)  # "0" and "1" were integers above


def parse_value(name: str, text: str) -> Any:
    """The value of option ``name`` written as ``text`` (lists comma-separated, switches on/off)."""
    kind = option_kind(name)
    if kind is list:
        return tuple(names(text))
    if kind is bool:
        if text.strip().lower() not in _SWITCH:
            raise argparse.ArgumentTypeError(f"{name} is on or off, got {text!r}")
        return _SWITCH[text.strip().lower()]
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{name} must be {what}, got {text!r}") from None
    return text if kind is str else literal(text)


def add_recovery_flags(
    parser: argparse.ArgumentParser, skip: tuple[str, ...] = (), defaults: dict[str, Any] | None = None
) -> None:
    """One flag per recovery option (``--batch-size`` for ``batch_size``), default "not given";
    ``defaults`` replaces the table's default of an option for this command."""
    defaults = dict(defaults or {})
    group = parser.add_argument_group("recovery options (as prunekit.recover's keyword options)")
    flagged = [name for name in RECOVERY_OPTIONS if name not in skip]
    for name in flagged:
        default, help_text = RECOVERY_OPTIONS[name]
        default = defaults.get(name, default)
        kind = option_kind(name)
        extra: dict[str, Any] = {"metavar": name.upper()}
        if kind is bool:
            extra = {"metavar": "{on,off}", "nargs": "?", "const": "on"}
            default = None if default is None else ("on" if default else "off")
        elif kind is list:
            extra["metavar"] = "A,B"
        if default is not None and "default" not in help_text:
            help_text = f"{help_text} (default: {default})"
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=f"recovery_{name}",
            default=None,
            type=functools.partial(parse_value, name),
            help=help_text,
            **extra,
        )
    parser.set_defaults(recovery_flags=tuple(flagged), recovery_defaults=defaults)


def given_recovery_options(args: argparse.Namespace) -> dict[str, Any]:
    """The recovery options given on the command line (over the command's ``defaults``), as keyword
    options of ``prunekit.recover``."""
    values = {name: getattr(args, f"recovery_{name}") for name in args.recovery_flags}
    return {**args.recovery_defaults, **{name: value for name, value in values.items() if value is not None}}


def recovery_settings(text: str) -> dict[str, Any]:
    """``mode=retrain,steps=8,train=norms,lora`` -> ``{"mode": "retrain", "steps": 8, "train": ("norms",
    "lora")}`` (an argparse ``type``): a part without ``=`` continues the list of the key before it."""
    pairs: list[list[str]] = []
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if sep and key.strip():
            pairs.append([key.strip().replace("-", "_"), value.strip()])
        elif not sep and pairs and part.strip():
            pairs[-1][1] += "," + part.strip()
        else:
            raise argparse.ArgumentTypeError(f"expected key=value pairs, got {part!r} in {text!r}")
    keys = [key for key, _value in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"{repeated[0]} is given twice in {text!r}")
    return {key: value if key in ("mode", "method") else parse_value(key, value) for key, value in pairs}
