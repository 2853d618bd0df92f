"""Llama-family decoders (Llama, Mistral, Qwen2, ...): attention heads with GQA, gated MLP, RMSNorm."""

from __future__ import annotations

import torch

from ..graph.groups import Group
from .base import Adapter, register_adapter


@register_adapter
class LlamaAdapter(Adapter):
    name = "llama"
    model_types = ("llama", "mistral", "qwen2", "qwen3", "granite", "olmo2", "smollm3")
    supported_roles = ("residual", "attention", "mlp")
    default_structured_roles = ("attention", "mlp")

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
