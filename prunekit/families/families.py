"""Decoder families composed from the standard parts: the knowledge is the table, not code.

Every family here passes the adapter conformance suite (tests/conformance.py) on a tiny config; the
docs' family table (docs/adapters.md) is generated from this registry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import Adapter, register_adapter
from .parts import MLP, Attention, Experts, HeldMixer, Mamba2Mixer, MambaMixer, Part


def family(name: str, model_types: tuple[str, ...], *parts: Part, **facts: object) -> type[Adapter]:
    """Register an adapter class called ``name`` made of ``parts`` for ``model_types``."""
    opaque: dict[str, str] = {}
    for part in parts:  # a part the trace cannot follow (MoE routing) makes its modules opaque
        for path in part.paths:
            opaque.update(part.opaque(path))
    opaque.update(facts.pop("opaque_modules", {}))
    attrs = {"name": name, "model_types": model_types, "parts": parts, "__module__": __name__,
             "opaque_modules": opaque, **facts}  # fmt: skip
    return register_adapter(type(f"{name.title().replace('_', '')}Adapter", (Adapter,), attrs))


# q/k/v/o_proj attention and a gated gate/up/down_proj MLP, as Llama (without Llama's uneven-KV path:
# their eager attention is not Llama's)
family(
    "llama_like",
    ("cohere", "cohere2", "cwm", "ernie4_5", "exaone4", "gemma", "gemma2", "gemma3_text", "granite_swa",
     "helium", "hunyuan_v1_dense", "hyperclovax", "internlm3", "iquestcoder", "ministral", "ministral3",
     "olmo", "olmo3", "seed_oss", "vaultgemma", "stablelm", "doge"),
    Attention(),
    MLP(),
)  # fmt: skip
family("up_down", ("arcee", "jais2", "nemotron"), Attention(), MLP(up=("up_proj",)))
family("fc", ("nanochat",), Attention(), MLP(up=("fc1",), down="fc2"))
family("starcoder2", ("starcoder2",), Attention(), MLP(up=("c_fc",), down="c_proj"))
family("glm", ("glm", "glm4"), Attention(), MLP(up=("gate_up_proj",), up_factor=2))
family("phi", ("phi",), Attention(o="dense"), MLP(up=("fc1",), down="fc2"))
PHI3_HEADS = "it cuts qkv_proj at config.num_attention_heads * head_dim, one value for every layer"
family(
    "phi3",
    ("phi3",),
    Attention(qkv="qkv_proj", fixed_heads=PHI3_HEADS, default_roles=()),
    MLP(up=("gate_up_proj",), up_factor=2),
)
# families whose config validates hidden_size % num_attention_heads: head counts cannot be config fields
NO_HEAD_FIELDS: dict = {}
family(
    "opt",
    ("opt", "biogpt"),
    Attention(o="out_proj", config_fields=NO_HEAD_FIELDS),
    MLP(paths=("",), up=("fc1",), down="fc2", config_fields={"intermediate_size": "ffn_dim"}),
)
family(
    "gpt2",
    ("gpt2", "gpt-sw3", "openai-gpt"),
    Attention(qkv="c_attn", o="c_proj", width_attrs=("split_size",), config_fields=NO_HEAD_FIELDS),
    MLP(up=("c_fc",), down="c_proj", config_fields={"intermediate_size": "n_inner"}),
)
family(
    "gpt_neox",
    ("gpt_neox", "persimmon"),
    Attention(qkv="query_key_value", o="dense", config_fields=NO_HEAD_FIELDS),
    MLP(up=("dense_h_to_4h",), down="dense_4h_to_h"),
)
family(
    "gpt_bigcode",
    ("gpt_bigcode",),
    Attention(qkv="c_attn", o="c_proj", width_attrs=("embed_dim",), config_fields=NO_HEAD_FIELDS),
    MLP(up=("c_fc",), down="c_proj", config_fields={"intermediate_size": "n_inner"}),
)

# hybrids: attention blocks and Mamba-2 blocks interleaved, each with an MLP
family(
    "bamba",
    ("bamba",),
    Attention(),
    Mamba2Mixer(paths=("mamba",), config_fields={}),
    MLP(paths=("feed_forward",)),
)

# GPT-J/CodeGen-style and other dense decoders whose projections carry their own names
family(
    "gptj",
    ("gptj",),
    Attention(o="out_proj", config_fields=NO_HEAD_FIELDS),
    MLP(up=("fc_in",), down="fc_out", config_fields={"intermediate_size": "n_inner"}),
)
family(
    "codegen",
    ("codegen",),
    Attention(qkv="qkv_proj", o="out_proj", config_fields=NO_HEAD_FIELDS),
    MLP(up=("fc_in",), down="fc_out", config_fields={"intermediate_size": "n_inner"}),
)
family(
    "gpt_neo",
    ("gpt_neo",),
    Attention(paths=("attn.attention",), o="out_proj", config_fields=NO_HEAD_FIELDS),
    MLP(up=("c_fc",), down="c_proj"),
)
family(
    "xglm",
    ("xglm",),
    Attention(o="out_proj", width_attrs=("embed_dim",), config_fields=NO_HEAD_FIELDS),
    MLP(paths=("",), up=("fc1",), down="fc2", config_fields={"intermediate_size": "ffn_dim"}),
)
family(
    "ctrl",
    ("ctrl",),
    Attention(
        paths=("multi_head_attention",), q="Wq", k="Wk", v="Wv", o="dense",
        width_attrs=("d_model_size",), config_fields=NO_HEAD_FIELDS,
    ),
    MLP(paths=("ffn",), up=("0",), down="2", config_fields={"intermediate_size": "dff"}, width_attrs=()),
)  # fmt: skip
family(
    "falcon",
    ("falcon",),
    Attention(
        qkv="query_key_value",
        o="dense",
        config_fields=NO_HEAD_FIELDS,
        default_roles=(),
        fixed_heads="it picks the key and value heads out of query_key_value by an index list ([-2], [-1])",
    ),
    MLP(up=("dense_h_to_4h",), down="dense_4h_to_h", config_fields={"intermediate_size": "ffn_hidden_size"}),
)
family("apertus", ("apertus", "apertus1p5_text"), Attention(), MLP(up=("up_proj",)))
ALIBI_HEADS = "its ALiBi slopes are computed per head from the model-wide head count"
family(
    "mpt",
    ("mpt",),
    Attention(
        qkv="Wqkv", o="out_proj", fixed_heads=ALIBI_HEADS, default_roles=(), config_fields=NO_HEAD_FIELDS
    ),
    MLP(paths=("ffn",), up=("up_proj",), config_fields={}),
)
family(
    "bloom",
    ("bloom",),
    Attention(qkv="query_key_value", o="dense", fixed_heads=ALIBI_HEADS, default_roles=(),
              config_fields=NO_HEAD_FIELDS),
    MLP(up=("dense_h_to_4h",), down="dense_4h_to_h", config_fields={}),
)  # fmt: skip
EXPERTS = "through latent projections (moe_latent_size) that no part describes yet"


def refuse_experts(has_experts: Callable[[Any], bool], where: str) -> Callable[[Adapter, Any], str | None]:
    """A ``refusal`` for a family whose config may or may not place experts of an unsupported kind in
    its blocks: the other configs are supported, those refused with ``where`` the experts sit."""

    def refusal(self: Adapter, config: Any) -> str | None:
        if config is not None and has_experts(config):
            return f"{where} route tokens to experts ({EXPERTS})"
        return self.structured_refusal

    return refusal


# Falcon-H1: attention and a Mamba-2 mixer side by side in every block, then the MLP. The mixer scales
# in_proj's output by a constant per-channel muP buffer (mup_vector) that pins every SSM channel in the
# trace, so its heads are not a default target; attention heads and MLP channels are
family(
    "falcon_h1",
    ("falcon_h1",),
    Attention(),
    Mamba2Mixer(paths=("mamba",), config_fields={}, default_roles=()),
    MLP(paths=("feed_forward",)),
)
# LFM2: gated short-convolution blocks and attention blocks, each with a w1/w3 -> w2 MLP; the convolution's
# channels have no part, so they stay (and the blocks' MLPs and the attention heads are pruned)
family(
    "lfm2",
    ("lfm2",),
    Attention(o="out_proj"),
    MLP(paths=("feed_forward",), up=("w1", "w3"), down="w2"),
)
# Zamba2: Mamba-2 blocks; hybrid blocks add the shared attention block (attention + fused MLP)
family(
    "zamba2",
    ("zamba2",),
    Attention(paths=("shared_transformer.self_attn",), config_fields=NO_HEAD_FIELDS),
    Mamba2Mixer(paths=("mamba", "mamba_decoder.mamba"), config_fields={}),
    MLP(paths=("shared_transformer.feed_forward",), up=("gate_up_proj",), up_factor=2, config_fields={}),
)
# Nemotron-H: every block is one mixer (Mamba-2, attention, MLP or experts with shared experts) at ``mixer``
family(
    "nemotron_h",
    ("nemotron_h",),
    Mamba2Mixer(paths=("mixer",), config_fields={}),
    Attention(paths=("mixer",)),
    MLP(paths=("mixer",), up=("up_proj",), config_fields={}),
    MLP(kind="shared_mlp", paths=("mixer.shared_experts",), up=("up_proj",), config_fields={}),
    Experts(paths=("mixer",), config_fields={}),
    refusal=refuse_experts(
        lambda c: (
            getattr(c, "moe_latent_size", None) is not None
            and "moe" in (getattr(c, "layers_block_type", None) or ())
        ),
        "its 'moe' blocks",
    ),
)
# Granite-4 hybrid: Mamba-2 or attention blocks, each with a fused gate/up shared MLP (and experts when
# num_local_experts > 0)
family(
    "granitemoehybrid",
    ("granitemoehybrid",),
    Attention(),
    Mamba2Mixer(paths=("mamba",), config_fields={}),
    MLP(
        paths=("shared_mlp",), up=("input_linear",), down="output_linear", up_factor=2,
        config_fields={"intermediate_size": "shared_intermediate_size"}, width_attrs=(),
    ),
    Experts(
        paths=("block_sparse_moe",),
        config_fields={"intermediate_size": "intermediate_size", "num_experts": "num_local_experts"},
    ),
)  # fmt: skip
# Llama-shaped projections around other attention maths (differential attention, sinks, gated
# normalised attention) or next to a linear-attention mixer no part describes (OLMo-hybrid's gated
# DeltaNet: its channels stay, the MLPs and the attention blocks' heads are pruned)
family("llama_shaped", ("exaone", "flint", "cohere_compass_text", "hrm_text"), Attention(), MLP())
family("lfm3", ("lfm3",), Attention(), MLP(paths=("feed_forward",), up=("w1", "w3"), down="w2"))
family(
    "gpt_neox_japanese",
    ("gpt_neox_japanese",),
    Attention(qkv="query_key_value", o="dense", config_fields=NO_HEAD_FIELDS),
    MLP(up=("dense_h_to_4h",), down="dense_4h_to_h", config_fields={}),
)
family(
    "diffllama",
    ("diffllama",),
    Attention(
        fixed_heads="differential attention pairs head i with head i + n/2 (it chunks the heads in halves)",
        default_roles=(),
    ),
    MLP(),
)
family(
    "dory",
    ("dory",),
    Attention(),
    MLP(),
    structured_refusal=(
        "every channel group is spanned by a normalization (L2 norms over the attention output, ffn_sub_norm "
        "over the MLP's intermediate channels): removing a channel is never the same as zeroing it"
    ),
)
DELTANET = {
    "*.linear_attn": "the gated DeltaNet writes each chunk's output into a slice of its output in place"
}
family("olmo_hybrid", ("olmo_hybrid",), Attention(), MLP(), opaque_modules=DELTANET)
# Qwen3.5: q_proj yields each head's query and its output gate
family("qwen3_5", ("qwen3_5_text",), Attention(q_factor=2), MLP(), opaque_modules=DELTANET)
family(
    "modernbert_decoder",
    ("modernbert-decoder",),
    Attention(paths=("attn",), o="Wo", config_fields=NO_HEAD_FIELDS),
    MLP(up=("Wi",), down="Wo", up_factor=2),
)
# multi-head latent attention (low-rank q/kv projections) has no part: its heads stay, the MLPs are pruned
family(
    "latent_attention_mlp",
    ("minicpm3", "youtu"),
    MLP(),
    opaque_modules={
        "*.self_attn": "latent attention writes its keys' rotary and other parts into slices in place"
    },
)


# Zamba: Mamba blocks (mixer held, see HeldMixer); hybrid blocks add the shared attention block
family(
    "zamba",
    ("zamba",),
    HeldMixer(),
    Attention(paths=("shared_transf.self_attn",), config_fields=NO_HEAD_FIELDS),
    MLP(paths=("shared_transf.feed_forward",), config_fields={}),
)


# mixtures of experts: llama-like attention, the routed experts, a dense MLP where some blocks have one
# and a shared expert beside the routed ones where the family has one
MIXTRAL_FIELDS = {"intermediate_size": "intermediate_size", "num_experts": "num_local_experts"}
QWEN_FIELDS = {"intermediate_size": "moe_intermediate_size", "num_experts": "num_experts"}
DEEPSEEK_FIELDS = {"intermediate_size": "moe_intermediate_size", "num_experts": "n_routed_experts"}
SHARED = ("mlp.shared_expert", "mlp.shared_experts", "mlp.shared_mlp", "block_sparse_moe.shared_mlp")
family(
    "mixtral",
    ("mixtral", "minimax_m2", "mellum", "flex_olmo", "mimo_v2_flash"),
    Attention(),
    Experts(config_fields=MIXTRAL_FIELDS),
)
family(
    "olmoe",
    ("olmoe",),
    Attention(),
    Experts(config_fields={**QWEN_FIELDS, "intermediate_size": "intermediate_size"}),
)
family(
    "qwen_moe",
    ("qwen2_moe", "qwen3_moe"),
    Attention(),
    MLP(),
    MLP(kind="shared_mlp", paths=SHARED, config_fields={}),
    Experts(config_fields=QWEN_FIELDS),
)
family(
    "shared_experts",
    (
        "ernie4_5_moe",
        "dots1",
        "glm4_moe",
        "exaone_moe",
        "kolibri1",
        "hy_v3",
        "solar_open",
        "cohere2_moe",
    ),
    Attention(),
    MLP(),
    MLP(kind="shared_mlp", paths=SHARED, config_fields={}),
    Experts(config_fields=DEEPSEEK_FIELDS),
)
family(
    "granitemoe",
    ("granitemoe", "granitemoeshared", "granitemoe_swa", "phimoe"),
    Attention(),
    MLP(kind="shared_mlp", paths=("shared_mlp",), up=("input_linear",), down="output_linear", up_factor=2,
        config_fields={}, width_attrs=()),
    Experts(paths=("block_sparse_moe", "mlp"), config_fields=MIXTRAL_FIELDS),
)  # fmt: skip
family("gpt_oss", ("gpt_oss",), Attention(), Experts(config_fields=MIXTRAL_FIELDS))
# Jamba: attention and Mamba blocks, each with an MLP or experts (and RMSNorms over dt/B/C in the mixer)
family(
    "jamba",
    ("jamba",),
    Attention(),
    MambaMixer(paths=("mamba",), config_fields={}),
    MLP(paths=("feed_forward",), config_fields={}),
    Experts(paths=("feed_forward",), config_fields={}),
)
family(
    "lfm2_moe",
    ("lfm2_moe",),
    Attention(o="out_proj"),
    MLP(paths=("feed_forward",), up=("w1", "w3"), down="w2"),
    Experts(paths=("feed_forward",), config_fields=QWEN_FIELDS),
)
# Qwen3.5/Qwen3-Next MoE: gated attention and gated DeltaNet blocks, each with experts and a shared expert
family(
    "qwen3_5_moe",
    ("qwen3_5_moe_text", "qwen3_next"),
    Attention(q_factor=2),
    MLP(),
    MLP(kind="shared_mlp", paths=SHARED, config_fields={}),
    Experts(config_fields=QWEN_FIELDS),
    opaque_modules=DELTANET,
)
