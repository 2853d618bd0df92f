"""What the family tests ask of prunekit: ``support(config)``, ``UnsupportedFamilyError`` and the roles a
structured prune takes by default."""

from __future__ import annotations

from prunekit import families
from prunekit.families import Support, UnsupportedFamilyError, support


def default_roles(config) -> tuple[str, ...]:
    """The group roles ``structure="structured"`` prunes when no targets are named (the adapter's)."""
    return tuple(families.adapter_for_config(config).default_structured_roles)


__all__ = ["Support", "UnsupportedFamilyError", "default_roles", "support"]
