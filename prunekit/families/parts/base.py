"""A typed part of a block (attention, MLP, Mamba mixer, ...) and what prunekit must know about it.

A family adapter is a list of parts; each block holds the parts whose module it has (a hybrid holds
attention in some blocks and a mixer in others). A part answers, for its own module only: which traced
groups are its units and under what role, which of them its code cannot shrink along, which module
attributes restate a size after surgery (and which config fields record it), and which state a checkpoint's
shapes cannot tell (restored before the sizes are re-read on load). Per-block sizes are recorded per part
kind, so blocks of different kinds serialise side by side.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.pytorch_utils import Conv1D

from ...graph.groups import Group
from ..components import Component

#: a block's recorded sizes: part kind -> {size name: int or list of ints}
Sizes = dict[str, Any]


class Part:
    """Base part. Subclasses set the class attributes and override the hooks their code needs."""

    #: the key its sizes are recorded under ("attention", "mlp", "mamba", ...)
    kind = "part"
    #: candidate paths of its module inside a block, first match wins
    paths: tuple[str, ...] = ()
    #: roles its groups get; ``default_roles`` are pruned by ``structure="structured"`` with no targets
    roles: tuple[str, ...] = ()
    default_roles: tuple[str, ...] = ()
    #: size name -> the config attribute that states it for every block (written when all blocks agree)
    config_fields: dict[str, str] = {}
    #: size names that are prunekit's own (lists), never written as config attributes
    own_fields: tuple[str, ...] = ()
    #: config flag -> module paths (relative to the part's module) whose bias the flag makes the class create
    bias_flags: dict[str, tuple[str, ...]] = {}

    def __init__(self, **overrides: Any) -> None:
        for key, value in overrides.items():
            if not hasattr(type(self), key):
                raise TypeError(f"{type(self).__name__} has no setting {key!r}")
            setattr(self, key, value)

    def components(self, path: str) -> tuple[Component, ...]:
        """What studies prune as this part, found at ``path`` in a block (see :mod:`..components`)."""
        return ()

    # ------------------------------------------------------------------ finding
    def locate(self, block: torch.nn.Module) -> tuple[str, torch.nn.Module] | None:
        """``(path, module)`` of this part in ``block``, or None when the block has no such part."""
        for path in self.paths:
            try:
                module = block.get_submodule(path)
            except AttributeError:
                continue
            if self.matches(module):
                return path, module
        return None

    def matches(self, module: torch.nn.Module) -> bool:
        """Whether ``module`` is this kind of part (its projections are where the part expects them)."""
        return True

    # ------------------------------------------------------------------ groups
    def opaque(self, path: str) -> dict[str, str]:
        """Module patterns (fnmatch) the trace must not follow, at ``path`` in a block -> why."""
        return {}

    def groups(self, name: str, module: torch.nn.Module, model: torch.nn.Module) -> list[Group]:
        """Groups this part states itself, where the trace cannot follow its code (MoE routing)."""
        return []

    def role(self, group: Group, name: str, module: torch.nn.Module) -> str | None:
        """The role of ``group`` if it is one of this part's (its module is ``name``), else None."""
        return None

    def rejects(self, group: Group, module: torch.nn.Module, model: torch.nn.Module) -> str | None:
        """Why this part's code cannot shrink along ``group``, or None if it can."""
        return None

    def runs_uneven(self, group: Group, module: torch.nn.Module, model: torch.nn.Module) -> bool:
        """Whether its code runs KV (B/C) groups that keep different numbers of heads."""
        return False

    def stat_taps(self, name: str, module: torch.nn.Module) -> dict:
        """Modules whose weight the code applies without calling them: ``{module name: (source, fn)}``."""
        return {}

    # ------------------------------------------------------------------ after surgery
    def before_hidden_change(self, module: torch.nn.Module, model: torch.nn.Module) -> None:
        """Record what shapes will not tell once the cut happens (KV group sizes)."""

    def on_removed(self, module: torch.nn.Module, group: Group, units: torch.Tensor) -> None:
        """Update counters shapes cannot tell once ``units`` of ``group`` left."""

    def restate(self, module: torch.nn.Module, model: torch.nn.Module) -> Sizes:
        """Make the module's size attributes match its weights; return its sizes."""
        return {}

    # ------------------------------------------------------------------ loading
    def restore(self, module: torch.nn.Module, sizes: Sizes) -> None:
        """Set what a checkpoint's shapes cannot tell, from recorded ``sizes``, before :meth:`restate`."""

    def legacy_sizes(self, flat: dict[str, Any]) -> Sizes:
        """This part's sizes out of a flat per-block record (files from before sizes were per kind)."""
        return {key: flat[key] for key in self.config_fields if key in flat}


def out_features(module: torch.nn.Module) -> int:
    """Output width of a Linear or of transformers' ``Conv1D`` (weight stored ``[in, out]``)."""
    weight = module.weight
    return int(weight.shape[1] if is_conv1d(module) else weight.shape[0])


def in_features(module: torch.nn.Module) -> int:
    weight = module.weight
    return int(weight.shape[0] if is_conv1d(module) else weight.shape[1])


def is_conv1d(module: torch.nn.Module) -> bool:
    """transformers' ``Conv1D``: a linear layer whose weight is stored transposed (GPT-2 and kin)."""
    return isinstance(module, Conv1D)


def set_if_present(module: torch.nn.Module, names: tuple[str, ...], value: int) -> None:
    """Restate every attribute of ``names`` the module has (families spell the same size differently)."""
    for name in names:
        if isinstance(getattr(module, name, None), int) and not isinstance(getattr(module, name), bool):
            setattr(module, name, value)
