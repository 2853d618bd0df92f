"""Llama-family decoders (Llama, Mistral, Qwen2, ...): attention heads with GQA, gated MLP, RMSNorm."""

from __future__ import annotations

from .base import Adapter, register_adapter
from .parts import MLP, Attention


@register_adapter
class LlamaAdapter(Adapter):
    name = "llama"
    model_types = ("llama", "mistral", "qwen2", "qwen3", "granite", "olmo2", "smollm3")
    parts = (Attention(uneven_kv=True), MLP())
    prunes_residual = True

    @property
    def bias_flags(self) -> dict[str, tuple[str, ...]]:
        return {
            "attention_bias": tuple(f"self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")),
            "mlp_bias": ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
        }
