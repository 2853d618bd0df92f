"""What the family tests ask of prunekit: ``support(config)``, ``UnsupportedFamilyError`` and the roles a
structured prune takes by default."""

from __future__ import annotations

from prunekit import families
from prunekit.families import Support, UnsupportedFamilyError, support


def default_roles(config, model=None) -> tuple[str, ...]:
    """The group roles ``structure="structured"`` prunes when no targets are named (the adapter's; with
    ``model``, those of the parts its blocks hold)."""
    adapter = families.adapter_for_config(config)
    return tuple(adapter.default_roles_in(model) if model is not None else adapter.default_structured_roles)


__all__ = ["Support", "UnsupportedFamilyError", "default_roles", "support"]
