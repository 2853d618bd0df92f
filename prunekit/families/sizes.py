"""Recorded per-block sizes: ``[{part kind: {size: value}}, ...]``, one record per block.

Sizes are keyed by part kind so that blocks of different kinds (attention blocks next to Mamba blocks)
record side by side. Files written before that recorded one flat dict per block; :func:`nest_legacy`
reads them.
"""

from __future__ import annotations

from typing import Any

from .parts import Part


def nest_legacy(record: Any, parts: list[Part]) -> Any:
    """A flat per-block record (``{"intermediate_size": 96, ...}``) as ``{kind: sizes}``; others as given."""
    if not isinstance(record, dict) or not record or any(isinstance(v, dict) for v in record.values()):
        return record
    return {part.kind: part.legacy_sizes(record) for part in parts}


def check_sizes(per_layer: Any, parts_per_block: list[list[Part]]) -> None:
    """Raise ``ValueError`` unless ``per_layer`` has one ``{kind: sizes}`` record per block, naming exactly
    the part kinds the block holds, each size a positive integer (a list of them for own fields)."""
    if not isinstance(per_layer, list) or len(per_layer) != len(parts_per_block):
        got = len(per_layer) if isinstance(per_layer, list) else type(per_layer).__name__
        raise ValueError(
            f"per-layer sizes must be a list with one entry per block ({len(parts_per_block)}), got {got}"
        )
    for i, (record, parts) in enumerate(zip(per_layer, parts_per_block)):
        kinds = sorted(p.kind for p in parts)
        if not isinstance(record, dict) or sorted(record) != kinds:
            got = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise ValueError(f"layer {i}: sizes must be recorded for the parts {kinds}, got {got}")
        for part in parts:
            _check_part(i, part, record[part.kind])


def _check_part(i: int, part: Part, sizes: Any) -> None:
    if not isinstance(sizes, dict) or not sizes:
        raise ValueError(f"layer {i}: {part.kind} sizes must be a non-empty object, got {sizes!r}")
    for key, value in sizes.items():
        if key in part.own_fields:
            ok = isinstance(value, list) and all(_positive(x) for x in value)
            if not ok:
                raise ValueError(
                    f"layer {i}: {part.kind}.{key} must be a list of positive ints, got {value!r}"
                )
        elif not _positive(value):
            raise ValueError(f"layer {i}: {part.kind}.{key} must be a positive integer, got {value!r}")


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
