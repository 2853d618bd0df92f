"""The family adapter: per-family knowledge that a trace cannot see, composed of typed block parts.

A trace finds *which* channels move together; it cannot know which of those groups the family's Python
code can still run with after shrinking, which module attributes and config fields restate a size, or
which modules are opaque kernels. A family adapter answers that by listing its block parts
(:mod:`.parts`: attention, MLP, Mamba mixers, ...) and the few family-wide facts (whether the residual
stream may shrink, opaque kernels). Blocks are found from the model (:mod:`.blocks`), and each block holds
the parts whose modules it has, so a hybrid is a family with more parts. It never scores or chooses.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from ..graph.groups import Group
from . import kv_index
from .blocks import UnsupportedFamilyError, family_name, find_blocks, missing_parts
from .components import ALL, Component
from .norms import find_norms
from .parts import Part
from .parts.attention import is_uneven_sizes
from .parts.base import is_conv1d, set_if_present
from .sizes import check_sizes, nest_legacy

ADAPTERS: dict[str, type[Adapter]] = {}


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    for key in cls.model_types:
        ADAPTERS[key] = cls
    return cls


def get_adapter(model: torch.nn.Module) -> Adapter:
    """The adapter for a model, by ``config.model_type`` (else the generic one: unstructured only)."""
    return adapter_for_config(getattr(model, "config", None))


def adapter_for_config(config: Any) -> Adapter:
    """The adapter for a model config alone, so callers can check a family before loading weights."""
    key = getattr(config, "model_type", None)
    cls = ADAPTERS.get(key) or ADAPTERS.get(type(config).__name__)
    return cls() if cls else GenericAdapter()


#: one part found in one block: (part, module name, module)
Found = tuple[Part, str, torch.nn.Module]


class Adapter:
    """A family: its parts, plus family-wide facts. Subclasses set the class attributes."""

    name = "base"
    model_types: tuple[str, ...] = ()
    parts: tuple[Part, ...] = ()
    #: module path patterns (fnmatch) of opaque kernels -> why; their channels are pinned, not an error
    opaque_modules: dict[str, str] = {}
    #: whether the residual stream (hidden size) may shrink; ``hidden_attrs`` restate it on block modules
    prunes_residual = False
    hidden_attrs: tuple[str, ...] = ("hidden_size",)
    #: why the family cannot be pruned structurally at all (None: it can)
    structured_refusal: str | None = None

    # ------------------------------------------------------------------ naming
    @property
    def supported_roles(self) -> tuple[str, ...]:
        roles = [r for part in self.parts for r in part.roles]
        return tuple(dict.fromkeys((["residual"] if self.prunes_residual else []) + roles))

    @property
    def default_structured_roles(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r for part in self.parts for r in part.default_roles))

    def default_roles_in(self, model: torch.nn.Module) -> tuple[str, ...]:
        """The default roles of the parts this model's blocks hold (a MoE config without dense blocks
        has no MLP groups to prune)."""
        kinds = {part.kind for _b, found in self.block_parts(model) for part, _n, _m in found}
        return tuple(
            dict.fromkeys(r for part in self.parts if part.kind in kinds for r in part.default_roles)
        )

    @property
    def components(self) -> tuple[Component, ...]:
        out: dict[str, Component] = {}
        for part in self.parts:
            where = "|".join(p for p in part.paths if p)
            for comp in part.components(f"({where})" if where else ""):
                out.setdefault(comp.name, comp)
        return tuple(out.values())

    @property
    def bias_flags(self) -> dict[str, tuple[str, ...]]:
        """Config flag -> module paths within a block whose bias the flag makes the class create."""
        flags: dict[str, tuple[str, ...]] = {}
        for part in self.parts:
            base = part.paths[0] if part.paths else ""
            for flag, mods in part.bias_flags.items():
                flags[flag] = flags.get(flag, ()) + tuple(f"{base}.{m}" if base else m for m in mods)
        return flags

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

    # ------------------------------------------------------------------ blocks and parts
    def layers(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        return [block for _name, block in find_blocks(model)]

    def block_parts(self, model: torch.nn.Module) -> list[tuple[str, list[Found]]]:
        """Every block's name and the parts it holds (module name, module)."""
        out = []
        for block_name, block in find_blocks(model):
            found = []
            for part in self.parts:
                hit = part.locate(block)
                if hit is not None:
                    path, module = hit
                    found.append((part, f"{block_name}.{path}" if path else block_name, module))
            out.append((block_name, found))
        return out

    def _all_found(self, model: torch.nn.Module) -> list[Found]:
        return [f for _block, found in self.block_parts(model) for f in found]

    def _owner(self, group: Group, model: torch.nn.Module) -> Found | None:
        """The part whose module holds ``group`` (the most specific one: OPT's MLP lives on the block)."""
        hits = [f for f in self._all_found(model) if group.name == f[1] or group.name.startswith(f[1] + ".")]
        return max(hits, key=lambda f: len(f[1]), default=None)

    def refusal(self, config: Any) -> str | None:
        """Why structured pruning cannot run on a model of ``config`` (None: it can).

        Most families answer alike for every config; a hybrid whose config may also place experts in some
        blocks (no part describes them) overrides this to refuse exactly those configs, so ``support()``
        says so before any weights are loaded.
        """
        return self.structured_refusal

    def check_structured(self, model: torch.nn.Module) -> None:
        """Raise :class:`UnsupportedFamilyError` unless structured pruning can run on this family."""
        refusal = self.refusal(getattr(model, "config", None))
        if refusal or not self.parts:
            why = refusal or missing_parts(getattr(model, "config", None))
            raise UnsupportedFamilyError(f"structured pruning of {family_name(model)}: {why}")
        for block_name, found in self.block_parts(model):
            if not found:
                kinds = ", ".join(p.kind for p in self.parts)
                raise UnsupportedFamilyError(
                    f"structured pruning of {family_name(model)}: block {block_name} holds none of the "
                    f"{self.name} adapter's parts ({kinds})"
                )

    # ------------------------------------------------------------------ groups
    def declared_groups(self, model: torch.nn.Module) -> list[Group]:
        """Groups the parts state themselves (the trace cannot follow MoE routing), in block order."""
        return [g for part, name, module in self._all_found(model) for g in part.groups(name, module, model)]

    def role(self, group: Group, model: torch.nn.Module) -> str:
        """A short name for what the group is ("attention", "mlp", "residual", ...)."""
        if self.embedding_param(model) in group.params:
            return "residual"
        owner = self._owner(group, model)
        role = owner[0].role(group, owner[1], owner[2]) if owner else None
        return role or group.kind

    def rejects(self, group: Group, model: torch.nn.Module) -> str | None:
        """Why the model's code cannot be shrunk along this group, or None if it can."""
        if group.role != "residual":
            owner = self._owner(group, model)
            why = owner[0].rejects(group, owner[2], model) if owner else None
            if why:
                return why
        if group.role not in self.supported_roles:
            return f"{self.name} adapter does not support pruning {group.role!r} groups ({group.kind})"
        return None

    def runs_uneven_groups(self, model: torch.nn.Module, group: Group) -> bool:
        """Whether the family's code runs a grouped-head group whose KV groups (B/C groups) keep different
        numbers of query heads. Most cannot: they repeat every KV head the same number of times."""
        owner = self._owner(group, model)
        return bool(owner) and owner[0].runs_uneven(group, owner[2], model)

    @staticmethod
    def embedding_param(model: torch.nn.Module) -> str | None:
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        if emb is None:
            return None
        for name, p in model.named_parameters():
            if p is emb.weight:
                return name
        return None

    @staticmethod
    def norm_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
        """Every normalisation layer (RMSNorm, LayerNorm, gated norms ...), found by behaviour
        (:func:`.norms.find_norms`); a family whose norms need other arguments overrides this."""
        return find_norms(model)

    # ------------------------------------------------------------------ calibration
    def stat_taps(self, model: torch.nn.Module) -> dict:
        """Modules whose weight the family's code applies without calling the module:
        ``{module_name: (source_module, fn)}``, the input being ``fn(source output)`` with features last."""
        taps: dict = {}
        for part, name, module in self._all_found(model):
            taps.update(part.stat_taps(name, module))
        return taps

    # ------------------------------------------------------------------ after surgery
    def before_hidden_change(self, model: torch.nn.Module) -> None:
        """Freeze what shapes will not tell after the cut (``head_dim`` derived from the hidden size)."""
        cfg = model.config
        if getattr(cfg, "num_attention_heads", None) and getattr(cfg, "hidden_size", None):
            # a head_dim derived as hidden_size // num_attention_heads would change with either count
            with contextlib.suppress(AttributeError):  # some configs derive it in a read-only property
                cfg.head_dim = int(
                    getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
                )
        for part, _name, module in self._all_found(model):
            part.before_hidden_change(module, model)

    def on_removed(self, model: torch.nn.Module, group: Group, units: torch.Tensor) -> None:
        """Tell the owning part, and every other module tied to it: Zamba2 repeats its shared attention
        block as distinct modules holding the same parameters, and each keeps its own counters."""
        owner = self._owner(group, model)
        if owner is None:
            return
        first = next(owner[2].parameters(), None)
        for part, _name, module in self._all_found(model):
            if module is owner[2] or (
                part is owner[0] and first is not None and next(module.parameters(), None) is first
            ):
                part.on_removed(module, group, units)

    def sync(self, model: torch.nn.Module) -> None:
        """Restate module attributes and config fields from the (shrunk) parameter shapes."""
        sync_standard_modules(model)
        config = getattr(model, "config", None)
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        if config is not None and emb is not None and hasattr(config, "hidden_size"):
            config.hidden_size = int(emb.weight.shape[1])
        per_layer, uneven = [], False
        for block_name, found in self.block_parts(model):
            if self.prunes_residual and emb is not None:
                for mod in model.get_submodule(block_name).modules():
                    set_if_present(mod, self.hidden_attrs, int(emb.weight.shape[1]))
            sizes = {part.kind: _restated(part, name, module, model) for part, name, module in found}
            uneven |= any(is_uneven_sizes(s) for s in sizes.values())
            per_layer.append(sizes)
        if uneven or any(getattr(p, "uneven_kv", False) for p in self.parts):
            kv_index.use_indexed(model.config, uneven)
        self.set_layer_fields(model, per_layer)
        self.after_sync(model, per_layer)

    def after_sync(self, model: torch.nn.Module, per_layer: list[dict[str, Any]]) -> None:
        """Family-wide restating that follows the blocks' sizes (none by default)."""

    # ------------------------------------------------------------------ saving and loading
    def read_sizes(self, model: torch.nn.Module, per_layer: Any) -> list[dict[str, Any]]:
        """Recorded per-block sizes, checked against the blocks and their parts (older flat records are
        nested per part kind first).

        Raises:
            ValueError: not one record per block, a part kind the block does not hold, or a size that is
                not a positive integer (a list of them for prunekit's own fields).
        """
        found = [[part for part, _n, _m in parts] for _b, parts in self.block_parts(model)]
        if isinstance(per_layer, list):
            per_layer = [nest_legacy(record, parts) for record, parts in zip(per_layer, found)] + per_layer[
                len(found) :
            ]
        check_sizes(per_layer, found)
        return per_layer

    def restore(self, model: torch.nn.Module, per_layer: list[dict[str, Any]]) -> None:
        """Set what shapes cannot tell (KV group sizes, state sizes) on freshly resized blocks."""
        for (_block, found), sizes in zip(self.block_parts(model), per_layer):
            for part, _name, module in found:
                part.restore(module, sizes[part.kind])

    def plain_config_fields(self, model: torch.nn.Module, per_layer: list[dict[str, Any]]) -> dict | None:
        """Top-level config values from which the family's own class builds exactly these blocks.

        None when it cannot (blocks of one kind differ, or KV groups are uneven): then a plain
        ``from_pretrained`` must fail on the first mismatching tensor, which :meth:`base_config_fields`
        ensures.
        """
        fields: dict[str, Any] = {}
        for part in self.parts:
            records = [sizes[part.kind] for sizes in per_layer if part.kind in sizes]
            if not records:
                continue
            if any(r != records[0] for r in records) or any(is_uneven_sizes(r) for r in records):
                return None
            if set(records[0]) - set(part.own_fields) - set(part.config_fields):
                return None  # a size the config cannot state: only prunekit's loader rebuilds it
            fields.update(
                {attr: records[0][key] for key, attr in part.config_fields.items() if key in records[0]}
            )
        return fields

    def base_config_fields(self, model: torch.nn.Module, per_layer: list[dict[str, Any]]) -> dict:
        """Top-level values for a model the class cannot build from one config: the sizes before pruning.

        The blocks are rebuilt from the checkpoint's shapes anyway; the pre-pruning sizes make a plain
        loader build the dense shapes and stop with a size mismatch instead of loading something else.
        """
        base = getattr(model.config, "prunekit_base_fields", None) or {}
        attrs = {attr for part in self.parts for attr in part.config_fields.values()}
        return {k: v for k, v in base.items() if k in attrs}

    def set_layer_fields(self, model: torch.nn.Module, per_layer: list[dict[str, Any]]) -> None:
        """Write per-block sizes into the config: a config attribute where every block of that part kind
        agrees, and always the per-block list (``config.prunekit_layers``)."""
        config = model.config
        if not per_layer:
            return
        if getattr(config, "prunekit_base_fields", None) is None:  # sizes before the first pruning
            attrs = {attr for part in self.parts for attr in part.config_fields.values()}
            values = {attr: getattr(config, attr, None) for attr in attrs}
            config.prunekit_base_fields = {k: v for k, v in values.items() if isinstance(v, int)}
        for part in self.parts:
            records = [sizes[part.kind] for sizes in per_layer if part.kind in sizes]
            for key, attr in part.config_fields.items():
                values = {r[key] for r in records if isinstance(r.get(key), int)}
                if len(values) == 1:
                    setattr(config, attr, values.pop())
        config.prunekit_layers = per_layer


def _restated(part: Part, name: str, module: torch.nn.Module, model: torch.nn.Module) -> dict[str, Any]:
    try:
        return part.restate(module, model)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None


class GenericAdapter(Adapter):
    """Families without an adapter: blocks are found, unstructured and N:M pruning work; structured
    pruning is refused (:meth:`Adapter.check_structured`) because nothing tells what the code restates."""

    name = "generic"


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
        elif is_conv1d(mod):  # transformers' transposed linear
            mod.nf = int(mod.weight.shape[1])


def resize_parameter(module: torch.nn.Module, name: str, shape: tuple[int, ...]) -> None:
    """Give ``module.<name>`` an uninitialised tensor of ``shape`` (same dtype, device; a no-op if equal).

    A missing (None) parameter stays missing: whether a bias exists is the loader's business.
    """
    old = getattr(module, name, None)
    if old is None or tuple(old.shape) == tuple(shape):
        return
    new = torch.empty(shape, dtype=old.dtype, device=old.device)
    setattr(module, name, torch.nn.Parameter(new, requires_grad=old.requires_grad))
