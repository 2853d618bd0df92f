"""A tiny config for every causal-LM family transformers registers, or the reason it has none.

transformers' ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`` is the list of families a user can hand to
:func:`prunekit.prune`. Each of its model types is classified here exactly once:

- :data:`FAMILIES` (type -> config overrides): a decoder-only text family that builds on CPU at 60-550 k
  parameters. :func:`tiny_config` starts from the config class's defaults, applies
  :data:`GENERIC` (small widths under every name the families use), cuts each per-layer pattern list
  (``layer_types``, ``mlp_layer_types``, ...) down to one block of each kind, so that a hybrid keeps its
  attention, recurrent and MoE blocks, then applies the family's own overrides, which are there only
  where the generic rules do not give a consistent config (each says why).
- :data:`EXCLUDED` (type -> reason): not a decoder-only text family (encoder-decoder, a BERT-style
  encoder that is registered for causal LM too, a multimodal wrapper, a speculative-decoding drafter).
  :data:`EXCLUSION_CHECKS` verifies the reason against transformers where a config or signature shows it.

``tests/test_family_mapping.py`` fails when a transformers release adds a type that is in neither,
asking for it to be classified here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

# fmt: off
GENERIC: dict[str, Any] = dict(
    # sizes every family names (under one of these spellings)
    vocab_size=128, hidden_size=64, d_model=64, n_embd=64, embedding_dim=64,
    num_hidden_layers=2, num_layers=2, n_layer=2, n_layers=2,
    num_attention_heads=4, n_head=4, n_heads=4, num_key_value_heads=2, head_dim=16, attention_head_dim=16,
    intermediate_size=128, ffn_dim=128, n_inner=128, ffn_hidden_size=128, dff=128, dim_ff=128, dim_head=16,
    feed_forward_size=128, dense_intermediate_size=128,
    max_position_embeddings=256, n_positions=256, max_seq_len=256,
    pad_token_id=0, bos_token_id=1, eos_token_id=2,
    rotary_dim=8,
    # sliding-window attention with its own head layout (Inkling)
    swa_num_attention_heads=4, swa_num_key_value_heads=2, swa_head_dim=16, unpadded_vocab_size=128,
    # mixtures of experts
    moe_intermediate_size=32, shared_expert_intermediate_size=32, moe_shared_expert_intermediate_size=32,
    shared_intermediate_size=32, shared_experts_intermediate_size=32, expert_ffn_hidden_size=32,
    num_experts=4, num_local_experts=4, n_routed_experts=4, moe_num_experts=4,
    num_experts_per_tok=2, num_experts_per_token=2, moe_k=2,
    n_shared_experts=1, num_shared_experts=1, num_expert_group=1, n_group=1, topk_group=1,
    first_k_dense_replace=1, num_dense_layers=1,  # one dense block, then MoE blocks
    # multi-head latent attention
    kv_lora_rank=16, q_lora_rank=16, o_lora_rank=16, o_groups=2, qk_rope_head_dim=8, qk_nope_head_dim=8,
    v_head_dim=16, index_n_heads=2, index_head_dim=16, index_topk=4,
    # state-space and linear-attention mixers
    state_size=8, ssm_state_size=8, mamba_d_state=8, time_step_rank=8, mamba_dt_rank=8,
    mamba_n_heads=8, mamba_d_head=16, mamba_num_heads=8, mamba_head_dim=16, mamba_n_groups=1,
    mamba_chunk_size=16, mamba_d_ssm=128,
    linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
    linear_head_dim=16, linear_num_heads=4,
    # per-layer token embeddings (Gemma-3n, Gemma-4)
    vocab_size_per_layer_input=128, hidden_size_per_layer_input=8,
)
# fmt: on

LAYER_COUNT_KEYS = ("num_hidden_layers", "num_layers", "n_layer", "n_layers")

_SMALL_ATTENTION = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, intermediate_size=128)

# fmt: off
#: families the generic rules build as they are
PLAIN = (
    "afmoe", "apertus", "apertus1p5_text", "arcee", "aria_text", "axk1", "axk2", "bailing_hybrid",
    "beam", "biogpt", "bitnet", "bloom", "codegen", "cohere", "cohere2", "cohere2_moe", "ctrl",
    "cwm", "deepseek_v2", "deepseek_v3", "deepseek_v32", "deepseek_v4", "diffllama", "doge", "dory",
    "dots1", "ernie4_5", "ernie4_5_moe", "exaone", "exaone4", "exaone_moe", "falcon", "falcon_h1",
    "falcon_mamba", "flex_olmo", "flint", "gemma", "gemma2", "gemma3_text", "gemma4_text",
    "gemma4_unified_text", "glm", "glm4", "glm4_moe", "glm4_moe_lite", "glm_moe_dsa", "gpt2",
    "gpt_bigcode", "gpt_neo", "gpt_neox", "gpt_neox_japanese", "gpt_oss", "gptj", "granite",
    "granite_swa", "granitemoe", "granitemoe_swa", "granitemoeshared", "helium", "hrm_text",
    "hunyuan_v1_dense", "hunyuan_v1_moe", "hy_v3", "hy_v4", "hyperclovax", "inkling2_loop_text",
    "inkling2_text", "inkling_text", "internlm3", "iquestcoder", "jais2", "jetmoe", "kimi_linear",
    "kolibri1", "laguna", "lara_mini", "lfm3", "llama", "llama4_text", "mamba", "mellum",
    "mimo_v2_flash", "minicpm3", "minimax", "minimax_m2", "minimax_m3_vl_text", "ministral",
    "ministral3", "mistral", "mixtral", "modernbert-decoder", "moshi", "mpt", "nanochat", "nemotron",
    "olmo", "olmo2", "olmo3", "olmo_hybrid", "olmoe", "openai-gpt", "opt", "persimmon",
    "phi", "phi3", "phimoe", "qwen2", "qwen2_moe", "qwen3", "qwen3_5_moe_text", "qwen3_5_text",
    "qwen3_moe", "qwen3_next", "rwkv", "sarvam_mla", "sarvam_moe", "seed_oss", "smollm3", "solar_open",
    "stablelm", "starcoder2", "vaultgemma", "xglm", "youtu", "zamba2",
)
# fmt: on

#: buildable families -> the overrides the generic rules do not provide (most need none)
FAMILIES: dict[str, dict[str, Any]] = {
    **{t: {} for t in PLAIN},
    # hybrids whose block kinds come from periods or index lists: one recurrent and one attention block
    "bamba": dict(attn_layer_indices=[1]),
    "jamba": dict(attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1),
    # attention/SSM/MoE hybrids: every kind of block, experts included
    "granitemoehybrid": dict(layer_types=["linear_attention", "full_attention"], num_local_experts=4),
    "nemotron_h": dict(
        num_hidden_layers=4, layers_block_type=["linear_attention", "moe", "full_attention", "mlp"]
    ),
    "recurrent_gemma": dict(
        block_types=["recurrent", "attention"], lru_width=64
    ),  # LRU width: 2560 by default
    "lfm2": dict(layer_types=["conv", "full_attention"], full_attn_idxs=[1]),
    "lfm2_moe": dict(layer_types=["conv", "full_attention"]),
    # Zamba ties one shared attention block into every hybrid block: it needs two of them to tie
    "zamba": dict(
        num_hidden_layers=3,
        layers_block_type=["linear_attention", "hybrid", "hybrid"],
        attention_hidden_size=128,
    ),
    # the default's all-full-attention layers find no rotary settings for "full_attention"
    "cohere_compass_text": dict(
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e4}}
    ),
    # the indexed-attention blocks need their indexer sizes (no defaults); a small hyper-connection rank
    "qwen4_exp_text": dict(
        indexer_n_heads=2,
        indexer_kv_heads=1,
        indexer_head_dim=16,
        indexer_budget=4,
        indexer_compress_ratio=2,
        hc_lowrank=8,
    ),
    # DBRX nests its sizes in attn/ffn sub-configs; its attention reads rope_theta from there (absent by
    # default) and clamps q/k/v by clip_qkv, which fails when that is None
    "dbrx": dict(
        attn_config=dict(kv_n_heads=2, rope_theta=1e4, clip_qkv=8.0),
        ffn_config=dict(ffn_hidden_size=32, moe_num_experts=4, moe_top_k=2),
    ),
    # sliding-window MLA blocks take their own sizes (swa_*), as many KV heads as query heads
    "dots3_note_text": dict(
        swa_num_attention_heads=4,
        swa_num_key_value_heads=4,
        swa_q_lora_rank=16,
        swa_kv_lora_rank=16,
        swa_head_dim=16,
        swa_qk_nope_head_dim=8,
        swa_v_head_dim=16,
    ),
    # KV sharing: the last blocks reuse the caches of earlier ones, so both kinds must produce one first
    "gemma3n_text": dict(
        num_hidden_layers=4,
        layer_types=["sliding_attention", "full_attention"] * 2,
        num_kv_shared_layers=2,
        activation_sparsity_pattern=[0.95, 0.95, 0.0, 0.0],
        intermediate_size=[128] * 4,
        laurel_rank=8,
    ),
    # two hybrid blocks: each repeats the shared attention block as its own module, tied to the other
    "zamba2": dict(num_hidden_layers=3, layers_block_type=["linear_attention", "hybrid", "hybrid"]),
    "mamba2": dict(num_heads=8, head_dim=16, n_groups=2, chunk_size=8),  # heads * head_dim == expand * hidden
    # transformers' cached mLSTM step assumes query/key heads as wide as value heads
    "xlstm": dict(num_heads=4, qk_dim_factor=1.0),
    "zaya": dict(num_experts_per_tok=1, router_hidden_size=16),  # ZAYA routes to one expert only
    # a LongCat block holds two attention/MLP pairs: num_hidden_layers counts those
    "longcat_flash": dict(num_layers=2, num_hidden_layers=4, zero_expert_num=2, moe_topk=2),
    # Emu3's causal LM is its text model alone, sized by text_config
    "emu3": dict(
        text_config=dict(
            _SMALL_ATTENTION,
            vocab_size=128,
            num_hidden_layers=2,
            num_key_value_heads=2,
            max_position_embeddings=256,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
    ),
    # byte-level: entropy patcher, local encoder, global transformer and local decoder, each sized apart
    # (its cached forward fails in transformers 5.24: DynamicCache(config=BltConfig) wants num_hidden_layers)
    "blt": dict(
        encoder_hash_byte_group_vocab=128,
        patcher_config=dict(_SMALL_ATTENTION, num_hidden_layers=1, head_dim=16),
        encoder_config=dict(_SMALL_ATTENTION, hidden_size_global=64, num_hidden_layers=1),
        decoder_config=dict(_SMALL_ATTENTION, hidden_size_global=64, num_hidden_layers=1, head_dim=16),
        global_config=dict(_SMALL_ATTENTION, num_hidden_layers=2, head_dim=16),
    ),
    # causal only as a decoder; axial position shape and chunk lengths must fit the tiny sizes
    "reformer": dict(
        is_decoder=True,
        attn_layers=["local", "lsh"],
        axial_pos_shape=[16, 16],
        axial_pos_embds_dim=[32, 32],
        attention_head_size=16,
        local_attn_chunk_length=4,
        lsh_attn_chunk_length=4,
        num_buckets=4,
        hash_seed=0,  # LSH draws random rotations on every forward otherwise
    ),
}

#: supported families with the overrides of a config they refuse (experts behind latent projections)
MOE_VARIANTS: dict[str, dict[str, Any]] = {
    "nemotron_h": dict(
        num_hidden_layers=4,
        layers_block_type=["linear_attention", "moe", "full_attention", "mlp"],
        moe_latent_size=32,
    ),
}

# fmt: off
ENCODER_DECODERS = (
    "bart", "bigbird_pegasus", "blenderbot", "blenderbot-small", "marian", "mbart", "mvp", "pegasus",
    "plbart", "prophetnet",
)
BERT_STYLE = (
    "bert", "bert-generation", "big_bird", "camembert", "data2vec-text", "electra", "ernie", "megatron-bert",
    "rembert", "roberta", "roberta-prelayernorm", "roc_bert", "roformer", "xlm-roberta", "xlm-roberta-xl",
    "xmod",
)
# fmt: on
_ENC_DEC = "encoder-decoder: its causal-LM class is the decoder half, which cross-attends to an encoder"
_BERT = "BERT-style bidirectional encoder; causal only with is_decoder=True, as a seq2seq decoder part"
_MUSIC = "text-to-music encoder-decoder: the decoder predicts audio codebooks from T5 encoder states"
_DRAFTER = "a speculative-decoding drafter: it reads the target model's shared KV states"


#: multimodal model types -> the buildable type of the text model their config wraps
WRAPPERS = {
    "gemma3": "gemma3_text",
    "gemma3n": "gemma3n_text",
    "gemma4": "gemma4_text",
    "gemma4_unified": "gemma4_unified_text",
    "llama4": "llama4_text",
    "qwen3_5": "qwen3_5_text",
    "qwen3_5_moe": "qwen3_5_moe_text",
    "qwen4_exp": "qwen4_exp_text",
    "dots3_note": "dots3_note_text",
    "got_ocr2": "qwen2",
    "moss_transcribe_diarize": "qwen3",
    "fuyu": "persimmon",
}


def _wrapper(text_type: str) -> str:
    return f"multimodal: the config wraps a text model (tested as {text_type}) with vision or audio parts"


#: the model types that are not decoder-only text families, and why
EXCLUDED: dict[str, str] = {
    **dict.fromkeys(ENCODER_DECODERS, _ENC_DEC),
    "whisper": "speech encoder-decoder: its causal-LM class is the text decoder; it cross-attends to audio",
    "musicgen": _MUSIC,
    "musicgen_melody": _MUSIC,
    **dict.fromkeys(BERT_STYLE, _BERT),
    "xlm": "XLM is a bidirectional masked LM unless causal=True (a BERT-style encoder by default)",
    "xlnet": "XLNet is a permutation LM with bidirectional attention (attn_type='bi'), not a causal decoder",
    "trocr": "the text decoder of TrOCR's image-to-text encoder-decoder: it cross-attends to image states",
    "gpt-sw3": "an alias: transformers builds it from GPT2Config (model_type 'gpt2'), tested as gpt2",
    "cpmant": "a prefix LM: CPM-Ant's forward lets every input token attend to all the others",
    "mllama": "a text decoder interleaved with cross-attention blocks that only run on image features",
    "git": "image-to-text: GitForCausalLM holds a CLIP vision encoder in front of its text decoder",
    "phi4_multimodal": "Phi4MultimodalForCausalLM holds image and audio encoders inside the language model",
    "gemma4_assistant": _DRAFTER,
    "gemma4_unified_assistant": _DRAFTER,
    **{t: _wrapper(text) for t, text in WRAPPERS.items()},
}


# ----------------------------------------------------------------------------------------------- configs
def mapping_types() -> list[str]:
    """Every model type transformers registers for causal LM, in its order."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return list(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def _layer_count(config) -> int | None:
    for key in LAYER_COUNT_KEYS:
        value = config.__dict__.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _patterns(defaults) -> dict[str, list]:
    """The default config's per-layer kind lists (``layer_types``, ``mlp_layer_types``, ...): one entry per
    default block and some entries repeated (a list of distinct layer indices is not a pattern)."""
    n = _layer_count(defaults)
    return {
        k: v
        for k, v in defaults.__dict__.items()
        if isinstance(v, list) and n and len(v) == n and k[0] != "_" and len({repr(x) for x in v}) < n
    }


def _kinds(patterns: dict[str, list]) -> list[int]:
    """Indices of the first block of each kind (each distinct row across the per-layer lists), in order."""
    n = len(next(iter(patterns.values()), []))
    seen, keep = set(), []
    for i in range(n):
        row = tuple(repr(values[i]) for values in patterns.values())
        if row not in seen:
            seen.add(row)
            keep.append(i)
    return keep


def _settable(cls, key: str) -> bool:
    """Some configs derive a generic name (Falcon's ``head_dim``) in a read-only property."""
    attr = getattr(cls, key, None)
    return not (isinstance(attr, property) and attr.fset is None)


def generic_kwargs(model_type: str) -> dict[str, Any]:
    """:data:`GENERIC` restricted to the names the type's config has, with its block pattern cut down."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    cls = CONFIG_MAPPING[model_type]
    defaults = cls()
    known = lambda k: (k in defaults.__dict__ or hasattr(cls, k)) and _settable(cls, k)  # noqa: E731
    kw = {k: v for k, v in GENERIC.items() if known(k)}
    if "kv_lora_rank" in kw:  # multi-head latent attention: one latent KV expands to every query head
        kw["num_key_value_heads"] = kw["num_attention_heads"]
        if "head_dim" in kw:  # rotary runs on the qk_rope part of each head only
            kw["head_dim"] = kw["qk_rope_head_dim"]
    patterns = _patterns(defaults)
    keep = _kinds(patterns)
    keep += range(len(keep), 2)  # at least two blocks
    for key in LAYER_COUNT_KEYS:
        if key in kw:
            kw[key] = len(keep)
    for key, values in patterns.items():  # a per-layer size list (Gemma-3n's widths) takes the tiny size
        kw[key] = [kw[key]] * len(keep) if key in kw else [values[i] for i in keep]
    return kw


def tiny_config(model_type: str):
    """The tiny config of a buildable family (KeyError, naming the classification, for any other type)."""
    if model_type not in FAMILIES:
        why = EXCLUDED.get(model_type, "it is not classified in tests/family_configs.py")
        raise KeyError(f"{model_type!r} has no tiny config: {why}")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return CONFIG_MAPPING[model_type](**{**generic_kwargs(model_type), **FAMILIES[model_type]})


def vocab_size(config) -> int:
    """The token vocabulary of a (possibly composite) config."""
    return int(config.get_text_config().vocab_size)


def build(model_type: str, seed: int = 0, config=None) -> torch.nn.Module:
    """A randomly initialised tiny model of ``model_type`` (fp32, eval mode)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config or tiny_config(model_type)).eval()


# --------------------------------------------------------------------------------------- exclusion checks
def attends_ahead(model: torch.nn.Module, vocab: int, length: int = 6) -> bool:
    """Whether the first position's logits change when the last token does (a causal LM's never do)."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (1, length), generator=gen)
    other = ids.clone()
    other[0, -1] = 3 + (int(ids[0, -1]) - 2) % (vocab - 3)
    with torch.no_grad():
        a = model(ids, use_cache=False).logits[0, 0]
        b = model(other, use_cache=False).logits[0, 0]
    return not torch.allclose(a, b, atol=1e-6, rtol=0)


#: what a BERT-style type needs besides the generic sizes to be built for :func:`_bidirectional`
_ENCODER_EXTRAS: dict[str, dict[str, Any]] = {
    "roc_bert": dict(
        shape_vocab_size=32, pronunciation_vocab_size=32, shape_embed_dim=16, pronunciation_embed_dim=16
    ),
    "xlm": dict(emb_dim=64),
}


def _bidirectional(model_type: str) -> bool:
    """Built small with its default settings (not as a decoder), the model attends to later tokens."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config = CONFIG_MAPPING[model_type](
        **{**generic_kwargs(model_type), **_ENCODER_EXTRAS.get(model_type, {})}
    )
    model = build(model_type, config=config)
    if model_type == "xmod":
        model.set_default_language("en_XX")
    return attends_ahead(model, vocab_size(config))


def _forward_takes(model_type: str, name: str) -> bool:
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    cls = getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type])
    return name in inspect.signature(cls.forward).parameters


def _default(model_type: str):
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return CONFIG_MAPPING[model_type]()


def _wraps(text_type: str) -> Callable[[str], bool]:
    return lambda t: _default(t).text_config.model_type == text_type and text_type in FAMILIES


#: excluded type -> a check of its reason against transformers (True when the reason holds)
EXCLUSION_CHECKS: dict[str, Callable[[str], bool]] = {
    **{t: lambda t: _default(t).is_encoder_decoder for t in (*ENCODER_DECODERS, "whisper", "musicgen")},
    "musicgen_melody": lambda t: _default(t).is_encoder_decoder,
    **{t: _bidirectional for t, why in EXCLUDED.items() if why == _BERT},
    "xlm": lambda t: _default(t).causal is False and _bidirectional(t),
    "xlnet": lambda t: _default(t).attn_type == "bi",
    "gpt-sw3": lambda t: _default(t).model_type == "gpt2" and "gpt2" in FAMILIES,
    "cpmant": _bidirectional,
    "trocr": lambda t: _forward_takes(t, "encoder_hidden_states"),
    "mllama": lambda t: (
        _forward_takes(t, "cross_attention_states") and bool(_default(t).text_config.cross_attention_layers)
    ),
    "git": lambda t: _default(t).vision_config is not None,
    "phi4_multimodal": lambda t: (
        _default(t).vision_config is not None and _default(t).audio_config is not None
    ),
    "gemma4_assistant": lambda t: _forward_takes(t, "shared_kv_states"),
    "gemma4_unified_assistant": lambda t: _forward_takes(t, "shared_kv_states"),
    **{t: _wraps(text) for t, text in WRAPPERS.items()},
}
