"""The adapter interface: per-family knowledge that a trace cannot see.

A trace finds *which* channels move together; it cannot know which of those groups the family's Python
code can actually run with after shrinking (Llama views every projection with one ``head_dim``), which
module attributes and config fields restate a size (``num_key_value_groups``, ``intermediate_size``), or
which modules are opaque kernels. An adapter answers exactly those questions, in a few dozen lines, and
nothing else: it never scores or chooses channels.
"""

from __future__ import annotations

from typing import Any

import torch

from ..graph.groups import Group

ADAPTERS: dict[str, type[Adapter]] = {}


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    for key in cls.model_types:
        ADAPTERS[key] = cls
    return cls


def get_adapter(model: torch.nn.Module) -> Adapter:
    """The adapter for a model, by ``config.model_type`` (falling back to a conservative generic one)."""
    config = getattr(model, "config", None)
    key = getattr(config, "model_type", None)
    cls = ADAPTERS.get(key) or ADAPTERS.get(type(config).__name__)
    return cls() if cls else GenericAdapter()


class Adapter:
    """Base adapter. Subclasses set ``model_types`` and override the hooks they need."""

    name = "base"
    model_types: tuple[str, ...] = ()
    #: module path patterns (fnmatch) of opaque kernels -> why; their channels are pinned, not an error
    opaque_modules: dict[str, str] = {}
    #: roles whose groups the family's code can shrink along
    supported_roles: tuple[str, ...] = ()
    #: roles pruned by ``structure="structured"`` when the user names no targets
    default_structured_roles: tuple[str, ...] = ()

    # ------------------------------------------------------------------ naming
    def role(self, group: Group, model: torch.nn.Module) -> str:
        """A short name for what the group is ("mlp", "attention", "residual", ...)."""
        if self.embedding_param(model) in group.params:
            return "residual"
        return group.kind

    def rejects(self, group: Group, model: torch.nn.Module) -> str | None:
        """Why the model's code cannot be shrunk along this group, or None if it can."""
        if group.role not in self.supported_roles:
            return f"{self.name} adapter does not support pruning {group.role!r} groups ({group.kind})"
        return None

    @staticmethod
    def embedding_param(model: torch.nn.Module) -> str | None:
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        if emb is None:
            return None
        for name, p in model.named_parameters():
            if p is emb.weight:
                return name
        return None

    # ------------------------------------------------------------------ calibration
    def stat_taps(self, model: torch.nn.Module) -> dict:
        """Modules whose weight the family's code applies without calling the module.

        Returns ``{module_name: (source_module, fn)}``: that module's input is ``fn(source output)``
        with features last, so calibration hooks can still see it.
        """
        return {}

    # ------------------------------------------------------------------ after surgery
    def before_hidden_change(self, model: torch.nn.Module) -> None:
        """Freeze config values that default to a function of the hidden size (e.g. ``head_dim``)."""

    def on_removed(
        self, model: torch.nn.Module, group: Group, removed_units: int, removed_outer: int
    ) -> None:
        """Update counters that cannot be read back from tensor shapes (e.g. Mamba-2's ``ssm_state_size``)."""

    def sync(self, model: torch.nn.Module) -> None:
        """Recompute module attributes and config fields from the (shrunk) parameter shapes."""
        sync_standard_modules(model)
        config = getattr(model, "config", None)
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        if config is not None and emb is not None and hasattr(config, "hidden_size"):
            config.hidden_size = int(emb.weight.shape[1])

    def layers(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        base = getattr(model, getattr(model, "base_model_prefix", "model"), model)
        return list(getattr(base, "layers", []))

    @staticmethod
    def set_layer_fields(model: torch.nn.Module, per_layer: list[dict[str, Any]]) -> None:
        """Write per-layer sizes into the config: global fields when uniform, and always a per-layer list."""
        config = model.config
        if not per_layer:
            return
        for key in per_layer[0]:
            values = {d[key] for d in per_layer}
            if len(values) == 1:
                setattr(config, key, values.pop())
        config.prunekit_layers = per_layer


class GenericAdapter(Adapter):
    """Fallback for unknown families: only independent channel groups inside one block."""

    name = "generic"
    supported_roles = ("channels",)
    default_structured_roles = ("channels",)

    def rejects(self, group: Group, model: torch.nn.Module) -> str | None:
        why = super().rejects(group, model)
        if why is None and group.norm_spanned:
            return "generic adapter does not prune channels that a normalization spans"
        return why


def sync_standard_modules(model: torch.nn.Module) -> None:
    """Make torch.nn modules' size attributes match their (possibly shrunk) weights."""
    for mod in model.modules():
        if isinstance(mod, torch.nn.Linear):
            mod.out_features, mod.in_features = (int(s) for s in mod.weight.shape)
        elif isinstance(mod, torch.nn.Embedding):
            mod.num_embeddings, mod.embedding_dim = (int(s) for s in mod.weight.shape)
        elif isinstance(mod, torch.nn.Conv1d):
            depthwise = mod.groups == mod.in_channels and mod.weight.shape[1] == 1 and mod.groups > 1
            mod.out_channels = int(mod.weight.shape[0])
            if depthwise or mod.groups == mod.out_channels:
                mod.in_channels = mod.groups = mod.out_channels
            else:
                mod.in_channels = int(mod.weight.shape[1]) * mod.groups
        elif isinstance(mod, torch.nn.LayerNorm) and mod.weight is not None:
            mod.normalized_shape = tuple(mod.weight.shape)
