"""Llama-family decoders (Llama, Mistral, Qwen2, ...): attention heads with GQA, gated MLP, RMSNorm."""

from __future__ import annotations

import torch

from ..graph.groups import Group
from . import kv_index
from .base import Adapter, register_adapter, resize_linear
from .components import Component


@register_adapter
class LlamaAdapter(Adapter):
    name = "llama"
    model_types = ("llama", "mistral", "qwen2", "qwen3", "granite", "olmo2", "smollm3")
    supported_roles = ("residual", "attention", "mlp")
    default_structured_roles = ("attention", "mlp")
    layer_fields = ("num_attention_heads", "num_key_value_heads", "intermediate_size", "kv_group_sizes")
    #: per-layer fields that are prunekit's own (a list), never written as top-level config values
    own_fields = ("kv_group_sizes",)
    components = (
        Component(
            "attention",
            "q/k/v/o projections; structured: whole heads (with their KV group's share)",
            weights=(r"re:self_attn\.[qkvo]_proj$",),
            roles=("attention",),
        ),
        Component(
            "mlp",
            "gate/up/down projections; structured: intermediate channels",
            weights=(r"re:mlp\.(gate|up|down)_proj$",),
            roles=("mlp",),
        ),
    )
    bias_flags = {
        "attention_bias": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
        "mlp_bias": ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
    }

    def role(self, group: Group, model: torch.nn.Module) -> str:
        base = super().role(group, model)
        if base == "residual":
            return base
        if group.name.endswith("self_attn") and group.kind == "heads":
            return "attention"
        if group.name.endswith("mlp") and group.kind == "channels":
            return "mlp"
        return f"{group.kind}"

    def rejects(self, group: Group, model: torch.nn.Module) -> str | None:
        if group.role == "attention" and group.block_size != self.head_dim(model):
            return f"heads of {group.block_size} channels do not match head_dim {self.head_dim(model)}"
        if group.role == "attention" and _is_uneven(_group_sizes(model.get_submodule(group.name))):
            return (
                "its query heads map to key/value heads by an index (uneven groups from an earlier "
                "pruning); prune its heads again from the dense model"
            )
        if group.kind == "inner":
            return "Llama modules view q, k, v and o with one head_dim shared with rotary: head_dim is fixed"
        return super().rejects(group, model)

    @staticmethod
    def head_dim(model: torch.nn.Module) -> int:
        cfg = model.config
        return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)

    def runs_uneven_groups(self, model: torch.nn.Module, group: Group) -> bool:
        """Yes, through :mod:`.kv_index`, when the model runs sdpa or eager attention."""
        return group.role == "attention" and kv_index.base_implementation(model.config) is not None

    def on_removed(self, model: torch.nn.Module, group: Group, units: torch.Tensor) -> None:
        """Record how many query heads each surviving KV head serves (removed ``units`` are query heads,
        in order; a KV head goes when all of its query heads go)."""
        if group.role != "attention":
            return
        attn = model.get_submodule(group.name)
        sizes = _group_sizes(attn)  # recorded by before_hidden_change, from the shapes before the cut
        owner = kv_index.kv_index(sizes)
        lost = torch.bincount(owner[units.cpu()], minlength=len(sizes)).tolist()
        attn.prunekit_kv_group_sizes = [k - d for k, d in zip(sizes, lost) if k > d]

    def before_hidden_change(self, model: torch.nn.Module) -> None:
        """Freeze ``head_dim`` and record every layer's KV group sizes while shapes still tell them."""
        head_dim = model.config.head_dim = self.head_dim(model)
        for layer in self.layers(model):
            attn = layer.self_attn
            if _group_sizes(attn) is None:
                n_q, n_kv = attn.q_proj.out_features // head_dim, attn.k_proj.out_features // head_dim
                attn.prunekit_kv_group_sizes = [n_q // max(1, n_kv)] * n_kv

    def sync(self, model: torch.nn.Module) -> None:
        super().sync(model)
        head_dim = self.head_dim(model)
        per_layer = []
        for i, layer in enumerate(self.layers(model)):
            attn, mlp = layer.self_attn, layer.mlp
            n_q = attn.q_proj.out_features // head_dim
            n_kv = attn.k_proj.out_features // head_dim
            sizes = _group_sizes(attn) or [n_q // max(1, n_kv)] * n_kv
            if len(sizes) != n_kv or sum(sizes) != n_q or min(sizes) < 1:
                raise ValueError(f"layer {i}: KV group sizes {sizes} do not fit {n_q} query, {n_kv} KV heads")
            _set_index(attn, sizes)
            attn.num_heads = n_q
            attn.num_key_value_heads = n_kv
            mlp.intermediate_size = mlp.gate_proj.out_features
            mlp.hidden_size = mlp.gate_proj.in_features
            per_layer.append(
                {
                    "num_attention_heads": n_q,
                    "num_key_value_heads": n_kv,
                    "intermediate_size": mlp.intermediate_size,
                    "kv_group_sizes": list(sizes),
                }
            )
        kv_index.use_indexed(model.config, any(_is_uneven(d["kv_group_sizes"]) for d in per_layer))
        self.set_layer_fields(model, per_layer)

    def check_layer_fields(self, model: torch.nn.Module, per_layer) -> None:
        """As the base check, with ``kv_group_sizes`` a list (absent in files saved before it existed)."""
        if isinstance(per_layer, list):
            per_layer = [_with_default_sizes(f) for f in per_layer]
        plain = [{k: v for k, v in f.items() if k != "kv_group_sizes"} for f in per_layer]
        base_fields = tuple(f for f in self.layer_fields if f != "kv_group_sizes")
        Adapter.check_fields(self.layers(model), plain, base_fields)
        for i, fields in enumerate(per_layer):
            sizes = fields["kv_group_sizes"]
            if not isinstance(sizes, list) or not all(isinstance(x, int) and x >= 1 for x in sizes):
                raise ValueError(f"layer {i}: kv_group_sizes must be a list of positive ints, got {sizes!r}")
            if len(sizes) != fields["num_key_value_heads"] or sum(sizes) != fields["num_attention_heads"]:
                raise ValueError(
                    f"layer {i}: kv_group_sizes {sizes} do not add up to {fields['num_attention_heads']} "
                    f"query heads over {fields['num_key_value_heads']} KV heads"
                )

    def plain_config_fields(self, model: torch.nn.Module, per_layer: list[dict]) -> dict | None:
        """Uneven KV groups cannot be built by the family's own class: no plain config then."""
        if any(_is_uneven(f.get("kv_group_sizes", [])) for f in per_layer):
            return None
        fields = super().plain_config_fields(model, per_layer)
        return {k: v for k, v in fields.items() if k not in self.own_fields} if fields else None

    def apply_layer_fields(self, model: torch.nn.Module, per_layer: list[dict]) -> None:
        per_layer = [_with_default_sizes(f) for f in per_layer]
        head_dim, hidden = self.head_dim(model), int(model.config.hidden_size)
        for i, (layer, fields) in enumerate(zip(self.layers(model), per_layer)):
            n_q, n_kv = fields["num_attention_heads"], fields["num_key_value_heads"]
            sizes = fields["kv_group_sizes"]
            if len(sizes) != n_kv or sum(sizes) != n_q:
                raise ValueError(f"layer {i}: {n_q} query heads do not split into KV groups of {sizes}")
            attn, mlp = layer.self_attn, layer.mlp
            attn.prunekit_kv_group_sizes = list(sizes)
            resize_linear(attn.q_proj, n_q * head_dim, hidden)
            resize_linear(attn.k_proj, n_kv * head_dim, hidden)
            resize_linear(attn.v_proj, n_kv * head_dim, hidden)
            resize_linear(attn.o_proj, hidden, n_q * head_dim)
            resize_linear(mlp.gate_proj, fields["intermediate_size"], hidden)
            resize_linear(mlp.up_proj, fields["intermediate_size"], hidden)
            resize_linear(mlp.down_proj, hidden, fields["intermediate_size"])
        self.finish_layer_fields(model, per_layer)


def _group_sizes(attn: torch.nn.Module) -> list[int] | None:
    return getattr(attn, "prunekit_kv_group_sizes", None)


def _is_uneven(sizes: list[int] | None) -> bool:
    return bool(sizes) and len(set(sizes)) > 1


def _with_default_sizes(fields: dict) -> dict:
    """Per-layer fields saved before ``kv_group_sizes`` existed: equal groups."""
    if "kv_group_sizes" in fields or not isinstance(fields, dict):
        return fields
    n_q, n_kv = fields.get("num_attention_heads"), fields.get("num_key_value_heads")
    if isinstance(n_q, int) and isinstance(n_kv, int) and n_kv > 0:
        return {**fields, "kv_group_sizes": [n_q // n_kv] * n_kv}
    return fields


def _set_index(attn: torch.nn.Module, sizes: list[int]) -> None:
    """Equal groups: transformers' own repeat. Uneven: one KV head per query head, gathered by index."""
    attn.prunekit_kv_group_sizes = list(sizes)
    if _is_uneven(sizes):
        attn.num_key_value_groups = 1
        index = kv_index.kv_index(sizes, device=attn.q_proj.weight.device)
        attn.register_buffer(kv_index.BUFFER, index, persistent=False)
    else:
        attn.num_key_value_groups = sizes[0]
        if kv_index.BUFFER in attn._buffers:
            del attn._buffers[kv_index.BUFFER]
