"""Named components of a family: what "prune only the attention" or "only the SSM heads" means.

Studies compare how parts of a model react to pruning (attention vs MLP; Mamba's in_proj, x_proj/dt_proj,
out_proj, SSM channels, state dims). Which weights or groups make up such a part is family knowledge, so
each adapter declares its components here, next to its roles, and the study code stays family-blind.

A component says what it is for each kind of pruning: ``weights`` are module-name patterns for
unstructured and N:M pruning (the ``targets=`` of :func:`prunekit.prune`), ``roles`` are group roles for
structured pruning. A component with no weights cannot be pruned unstructured (Mamba-2's state dims
are not a set of whole matrices); one with no roles cannot be pruned structurally (an in_proj alone is
not a unit that can be removed without its consumers).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Component", "ALL"]

#: the implicit component every family has: the method's default targets
ALL = "all"


@dataclass(frozen=True)
class Component:
    name: str
    description: str
    weights: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()

    def targets(self, structured: bool) -> tuple[str, ...] | None:
        """``targets=`` for :func:`prunekit.prune`, or None when this kind of pruning does not apply."""
        chosen = self.roles if structured else self.weights
        return chosen or None

    def why_not(self, structured: bool) -> str:
        kind = "structured" if structured else "unstructured/N:M"
        other = "unstructured/N:M" if structured else "structured"
        return f"component {self.name!r} has no {kind} targets (it is defined for {other} pruning only)"
