"""Llama-family decoders (Llama, Mistral, Qwen2, ...): attention heads with GQA, gated MLP, RMSNorm."""

from __future__ import annotations

import torch

from ..graph.groups import Group
from .base import Adapter, register_adapter, resize_linear
from .components import Component


@register_adapter
class LlamaAdapter(Adapter):
    name = "llama"
    model_types = ("llama", "mistral", "qwen2", "qwen3", "granite", "olmo2", "smollm3")
    supported_roles = ("residual", "attention", "mlp")
    default_structured_roles = ("attention", "mlp")
    layer_fields = ("num_attention_heads", "num_key_value_heads", "intermediate_size")
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
        if group.kind == "inner":
            return "Llama modules view q, k, v and o with one head_dim shared with rotary: head_dim is fixed"
        return super().rejects(group, model)

    @staticmethod
    def head_dim(model: torch.nn.Module) -> int:
        cfg = model.config
        return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)

    def before_hidden_change(self, model: torch.nn.Module) -> None:
        model.config.head_dim = self.head_dim(model)

    def sync(self, model: torch.nn.Module) -> None:
        super().sync(model)
        head_dim = self.head_dim(model)
        per_layer = []
        for layer in self.layers(model):
            attn, mlp = layer.self_attn, layer.mlp
            n_q = attn.q_proj.out_features // head_dim
            n_kv = attn.k_proj.out_features // head_dim
            attn.num_key_value_groups = n_q // max(1, n_kv)
            attn.num_heads = n_q
            attn.num_key_value_heads = n_kv
            mlp.intermediate_size = mlp.gate_proj.out_features
            mlp.hidden_size = mlp.gate_proj.in_features
            per_layer.append(
                {
                    "num_attention_heads": n_q,
                    "num_key_value_heads": n_kv,
                    "intermediate_size": mlp.intermediate_size,
                }
            )
        self.set_layer_fields(model, per_layer)

    def apply_layer_fields(self, model: torch.nn.Module, per_layer: list[dict]) -> None:
        head_dim, hidden = self.head_dim(model), int(model.config.hidden_size)
        for i, (layer, fields) in enumerate(zip(self.layers(model), per_layer)):
            n_q, n_kv = fields["num_attention_heads"], fields["num_key_value_heads"]
            if n_q % n_kv:
                raise ValueError(f"layer {i}: {n_q} query heads do not split into {n_kv} key/value groups")
            attn, mlp = layer.self_attn, layer.mlp
            resize_linear(attn.q_proj, n_q * head_dim, hidden)
            resize_linear(attn.k_proj, n_kv * head_dim, hidden)
            resize_linear(attn.v_proj, n_kv * head_dim, hidden)
            resize_linear(attn.o_proj, hidden, n_q * head_dim)
            resize_linear(mlp.gate_proj, fields["intermediate_size"], hidden)
            resize_linear(mlp.up_proj, fields["intermediate_size"], hidden)
            resize_linear(mlp.down_proj, hidden, fields["intermediate_size"])
        self.finish_layer_fields(model, per_layer)
