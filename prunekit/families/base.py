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
from .components import ALL, Component

ADAPTERS: dict[str, type[Adapter]] = {}


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    for key in cls.model_types:
        ADAPTERS[key] = cls
    return cls


def get_adapter(model: torch.nn.Module) -> Adapter:
    """The adapter for a model, by ``config.model_type`` (falling back to a conservative generic one)."""
    return adapter_for_config(getattr(model, "config", None))


def adapter_for_config(config: Any) -> Adapter:
    """The adapter for a model config alone, so callers can check a family before loading weights."""
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
    #: named parts of a block that studies prune one at a time (see :mod:`.components`)
    components: tuple[Component, ...] = ()

    # ------------------------------------------------------------------ naming
    def component(self, name: str) -> Component:
        """The component called ``name`` ("all" is every family's default targets).

        Raises:
            ValueError: the family has no such component; the message lists the ones it has.
        """
        if name == ALL:
            return Component(ALL, "the method's default targets (whole blocks)")
        for comp in self.components:
            if comp.name == name:
                return comp
        known = ", ".join([ALL, *(c.name for c in self.components)])
        raise ValueError(f"the {self.name} family has no component {name!r}; it has: {known}")

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

    def on_removed(self, model: torch.nn.Module, group: Group, units: torch.Tensor) -> None:
        """Update what cannot be read back from tensor shapes once ``units`` of ``group`` left (Mamba-2's
        ``ssm_state_size``, which query heads each KV head serves after uneven head removal)."""

    def runs_uneven_groups(self, model: torch.nn.Module, group: Group) -> bool:
        """Whether the family's code runs a grouped-head group whose KV groups (B/C groups) keep different
        numbers of query heads. Most cannot: they repeat every KV head the same number of times."""
        return False

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

    # ------------------------------------------------------------------ saving and loading
    #: the per-layer fields :meth:`sync` records in ``config.prunekit_layers``
    layer_fields: tuple[str, ...] = ()
    #: config flag -> module names (within a block) whose bias the family's code creates when it is set
    bias_flags: dict[str, tuple[str, ...]] = {}

    def apply_layer_fields(self, model: torch.nn.Module, per_layer: list[dict[str, Any]]) -> None:
        """Reshape a freshly built (dense-config) model so that every block has the recorded sizes.

        The new tensors are uninitialised: a loader fills them from the checkpoint right after. Ends with
        :meth:`sync`, so module attributes and ``config.prunekit_layers`` follow the new shapes, and
        raises ``ValueError`` when the shapes that come out do not reproduce ``per_layer``.
        """
        raise NotImplementedError(f"the {self.name} adapter cannot rebuild per-layer sizes")

    def check_layer_fields(self, model: torch.nn.Module, per_layer: Any) -> None:
        """Raise ``ValueError`` unless ``per_layer`` is one dict of positive ints per block, same keys."""
        self.check_fields(self.layers(model), per_layer, self.layer_fields)

    @staticmethod
    def check_fields(layers: list, per_layer: Any, layer_fields: tuple[str, ...]) -> None:
        """One dict per block in ``layers`` with exactly ``layer_fields``, each a positive int."""
        if not isinstance(per_layer, list) or len(per_layer) != len(layers):
            raise ValueError(
                f"per-layer fields must be a list with one entry per block ({len(layers)}), got "
                f"{len(per_layer) if isinstance(per_layer, list) else type(per_layer).__name__}"
            )
        for i, fields in enumerate(per_layer):
            if not isinstance(fields, dict) or set(fields) != set(layer_fields):
                got = sorted(fields) if isinstance(fields, dict) else type(fields).__name__
                want = sorted(layer_fields)
                raise ValueError(f"layer {i}: per-layer fields must be {want}, got {got}")
            for key, value in fields.items():
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"layer {i}: {key} must be a positive integer, got {value!r}")

    def finish_layer_fields(self, model: torch.nn.Module, per_layer: list[dict[str, Any]]) -> None:
        """Sync after :meth:`apply_layer_fields` and check that the shapes reproduce ``per_layer``."""
        self.sync(model)
        got = getattr(model.config, "prunekit_layers", None)
        for i, (want, have) in enumerate(zip(per_layer, got or [])):
            if want != have:
                raise ValueError(f"layer {i}: per-layer fields {want} are inconsistent (shapes give {have})")

    def plain_config_fields(self, model: torch.nn.Module, per_layer: list[dict[str, Any]]) -> dict | None:
        """Top-level config values from which the family's own class builds exactly these blocks.

        None when it cannot (the blocks differ): then a plain ``from_pretrained`` must fail on the first
        mismatching tensor, which :meth:`base_config_fields` ensures.
        """
        return dict(per_layer[0]) if per_layer and self.is_uniform(per_layer) else None

    def base_config_fields(self, model: torch.nn.Module, per_layer: list[dict[str, Any]]) -> dict:
        """Top-level values for a model the class cannot build from one config: the sizes before pruning.

        The blocks are rebuilt from the per-layer list anyway; the pre-pruning sizes make a plain loader
        build the dense shapes and stop with a size mismatch instead of loading something else.
        """
        base = getattr(model.config, "prunekit_base_fields", None) or {}
        return {k: v for k, v in base.items() if k in self.layer_fields}

    @staticmethod
    def is_uniform(per_layer: list[dict[str, Any]]) -> bool:
        return all(fields == per_layer[0] for fields in per_layer)

    @staticmethod
    def set_layer_fields(model: torch.nn.Module, per_layer: list[dict[str, Any]]) -> None:
        """Write per-layer sizes into the config: global fields when uniform, and always a per-layer list."""
        config = model.config
        if not per_layer:
            return
        if getattr(config, "prunekit_base_fields", None) is None:  # sizes before the first pruning
            fields = {key: getattr(config, key, None) for key in per_layer[0]}
            config.prunekit_base_fields = {k: v for k, v in fields.items() if isinstance(v, int)}
        for key in per_layer[0]:
            values = [d[key] for d in per_layer]
            if all(isinstance(v, int) for v in values) and len(set(values)) == 1:
                setattr(config, key, values[0])
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


def resize_parameter(module: torch.nn.Module, name: str, shape: tuple[int, ...]) -> None:
    """Give ``module.<name>`` an uninitialised tensor of ``shape`` (same dtype, device; a no-op if equal).

    A missing (None) parameter stays missing: whether a bias exists is the loader's business.
    """
    old = getattr(module, name, None)
    if old is None or tuple(old.shape) == tuple(shape):
        return
    new = torch.empty(shape, dtype=old.dtype, device=old.device)
    setattr(module, name, torch.nn.Parameter(new, requires_grad=old.requires_grad))


def resize_linear(linear: torch.nn.Module, out_features: int, in_features: int) -> None:
    """Reshape a Linear's weight (and bias, if it has one) to ``[out, in]``."""
    resize_parameter(linear, "weight", (out_features, in_features))
    resize_parameter(linear, "bias", (out_features,))


def resize_depthwise_conv(conv: torch.nn.Conv1d, channels: int) -> None:
    """Reshape a depthwise Conv1d (one filter per channel) to ``channels`` channels."""
    resize_parameter(conv, "weight", (channels, 1, conv.weight.shape[-1]))
    resize_parameter(conv, "bias", (channels,))
