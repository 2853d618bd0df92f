"""What the family tests ask of prunekit: ``support(config)``, ``UnsupportedFamilyError`` and the roles a
structured prune takes by default -- from ``prunekit.families`` where it has them, else from a shim.

SHIM (remove once ``prunekit.families.support`` is in main): until the families refactor lands, prunekit
has only ``ADAPTERS`` (model type -> adapter class), and :func:`prunekit.prune` falls back to a generic
adapter instead of refusing a family it has no adapter for. The shim derives :func:`support` from
``ADAPTERS`` (a registered adapter counts as full support) and :data:`SHIM` tells the tests that
refusals cannot be asked of prunekit yet.
"""

from __future__ import annotations

from dataclasses import dataclass

from prunekit import families

try:
    from prunekit.families import Support, UnsupportedFamilyError, support

    SHIM = False
except ImportError:  # SHIM: today's API
    SHIM = True

    @dataclass(frozen=True)
    class Support:  # type: ignore[no-redef]
        """As ``prunekit.families.Support`` will be: ``reason`` None means fully supported."""

        model_type: str
        adapter: str | None
        reason: str | None

        @property
        def supported(self) -> bool:
            return self.reason is None

    class UnsupportedFamilyError(ValueError):  # type: ignore[no-redef]
        """Placeholder: today's prunekit never raises it, so no test can expect it to."""

    def support(config) -> Support:  # type: ignore[no-redef]
        model_type = getattr(config, "model_type", None) or type(config).__name__
        cls = families.ADAPTERS.get(model_type)
        if cls is not None:
            return Support(model_type, cls.name, None)
        return Support(model_type, None, f"prunekit has no family adapter for {model_type!r}")


#: why a refusal test cannot run against today's prunekit (see the module docstring)
SHIM_REASON = (
    "SHIM: this prunekit has no prunekit.families.support / UnsupportedFamilyError yet; it prunes an unknown "
    "family with its generic adapter instead of refusing it"
)


def default_roles(config) -> tuple[str, ...]:
    """The group roles ``structure="structured"`` prunes when no targets are named (the adapter's)."""
    return tuple(families.adapter_for_config(config).default_structured_roles)


__all__ = ["SHIM", "SHIM_REASON", "Support", "UnsupportedFamilyError", "default_roles", "support"]
