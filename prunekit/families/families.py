"""Decoder families composed from the standard parts: the knowledge is the table, not code.

Every family here passes the adapter conformance suite (tests/conformance.py) on a tiny config; the
docs' family table (docs/adapters.md) is generated from this registry.
"""

from __future__ import annotations

from .base import Adapter, register_adapter
from .parts import MLP, Attention, Part


def family(name: str, model_types: tuple[str, ...], *parts: Part, **facts: object) -> type[Adapter]:
    """Register an adapter class called ``name`` made of ``parts`` for ``model_types``."""
    attrs = {"name": name, "model_types": model_types, "parts": parts, "__module__": __name__, **facts}
    return register_adapter(type(f"{name.title().replace('_', '')}Adapter", (Adapter,), attrs))


family(
    "llama_like",
    ("apertus", "arcee", "cohere", "cohere2", "cwm", "ernie4_5", "exaone4", "gemma", "gemma2", "gemma3_text",
     "glm", "glm4", "granite_swa", "helium", "hunyuan_v1_dense", "hyperclovax", "internlm3", "iquestcoder",
     "jais2", "ministral", "ministral3", "nemotron", "olmo", "olmo3", "seed_oss", "starcoder2", "vaultgemma",
     "exaone", "apertus1p5_text", "beam", "bitnet", "dory", "flint", "nanochat", "persimmon", "stablelm",
     "diffllama", "doge", "lfm2", "minicpm3", "modernbert-decoder", "moshi"),
    Attention(),
    MLP(),
)  # fmt: skip
family("opt_like", ("opt", "biogpt", "xglm", "trocr"), Attention(o="out_proj"), MLP(paths=("",), up=("fc1",), down="fc2"))
family("phi", ("phi",), Attention(o="dense"), MLP(up=("fc1",), down="fc2"))
family("phi3", ("phi3",), Attention(qkv="qkv_proj"), MLP(up=("gate_up_proj",), up_factor=2))
family("gpt2", ("gpt2", "gpt-sw3", "openai-gpt"), Attention(qkv="c_attn", o="c_proj", width_attrs=("split_size",)), MLP(up=("c_fc",), down="c_proj"))
family("gpt_neox", ("gpt_neox", "gpt_neox_japanese"), Attention(qkv="query_key_value", o="dense"), MLP(up=("dense_h_to_4h",), down="dense_4h_to_h"))
family("gpt_bigcode", ("gpt_bigcode",), Attention(qkv="c_attn", o="c_proj"), MLP(up=("c_fc",), down="c_proj"))
family("mpt", ("mpt",), Attention(qkv="Wqkv", o="out_proj"), MLP(paths=("ffn",), up=("up_proj",), down="down_proj"))
family("bloom", ("bloom",), Attention(qkv="query_key_value", o="dense"), MLP(up=("dense_h_to_4h",), down="dense_4h_to_h"))
