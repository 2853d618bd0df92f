"""Attention whose query heads map to key/value heads by an index, for uneven GQA after head removal.

transformers' GQA repeats every key/value head ``num_key_value_groups`` times, so all KV groups must
keep the same number of query heads. Removing the lowest-scoring heads wherever they are (what a head
budget of ``int(9 * 0.2) = 1`` per layer needs on 3 KV groups of 3) leaves groups of 3, 3 and 2. The
kept query heads stay ordered by KV head, so the map is ``[0, 0, 0, 1, 1, 1, 2, 2]``: this module
registers an attention function with transformers' attention interface that gathers each query head's
key/value head by that index and then runs the model's own implementation (sdpa or eager) as plain
multi-head attention. Key/value weights are not duplicated; the cache keeps one entry per KV head.
"""

from __future__ import annotations

import torch
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

#: base implementation -> the name prunekit registers for it
INDEXED = {"sdpa": "prunekit_kv_index_sdpa", "eager": "prunekit_kv_index_eager"}
BUFFER = "prunekit_kv_index"


def kv_index(sizes: list[int], device=None) -> torch.Tensor:
    """Query head -> KV head for KV groups keeping ``sizes[i]`` query heads each (in order)."""
    counts = torch.tensor(sizes, device=device)
    return torch.repeat_interleave(torch.arange(len(sizes), device=device), counts)


def _indexed(base: str):
    def attention(module, query, key, value, attention_mask, **kwargs):
        index = getattr(module, BUFFER, None)
        if index is not None:
            key, value = key.index_select(1, index), value.index_select(1, index)
        if base == "eager":
            from transformers.models.llama.modeling_llama import eager_attention_forward

            return eager_attention_forward(module, query, key, value, attention_mask, **kwargs)
        return ALL_ATTENTION_FUNCTIONS[base](module, query, key, value, attention_mask, **kwargs)

    attention.__name__ = f"kv_index_{base}_attention"
    return attention


def base_implementation(config) -> str | None:
    """The implementation the model runs (sdpa or eager) under any indexed wrapper, None if another."""
    current = getattr(config, "_attn_implementation", None) or "eager"
    for base, name in INDEXED.items():
        if current in (base, name):
            return base
    return None


def use_indexed(config, wanted: bool) -> None:
    """Switch the model's attention to the indexed wrapper of its implementation, or back to it
    (a model that needs no index keeps whatever implementation it runs)."""
    if not wanted and getattr(config, "_attn_implementation", None) not in INDEXED.values():
        return
    base = base_implementation(config)
    if base is None:
        raise ValueError(
            f"uneven key/value groups need sdpa or eager attention, not {config._attn_implementation!r}"
        )
    config._attn_implementation = INDEXED[base] if wanted else base


for _base, _name in INDEXED.items():
    AttentionInterface.register(_name, _indexed(_base))
    AttentionMaskInterface.register(_name, ALL_MASK_ATTENTION_FUNCTIONS[_base])
