"""Matched model configurations for the three reference architectures.

The point of the reference models is to compare how pruning treats a transformer, Mamba and Mamba-2
*of the same size trained on the same data*, so the configs share everything that is not the
architecture itself: the tokenizer (vocabulary size and special ids), the residual width
(``hidden_size``), tied input/output embeddings, and a parameter budget.  Depth is what differs: a
Mamba block has roughly 0.6x the parameters of a Llama block of the same width, so the state-space
models get more blocks (as in the Mamba papers, where two Mamba blocks stand in for one attention+MLP
block).  :func:`parameter_counts` reports the totals; the ``small`` sizes agree within 10 %.

Every config is a stock transformers class (``LlamaConfig``, ``MambaConfig``, ``Mamba2Config``), so the
trained models load with ``AutoModelForCausalLM`` and need nothing from prunekit.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    Mamba2Config,
    MambaConfig,
    PretrainedConfig,
)

__all__ = [
    "ARCHS",
    "SIZES",
    "SpecialIds",
    "check_arch",
    "count_parameters",
    "parameter_counts",
    "reference_config",
]

#: Architectures that have a reference config.
ARCHS: tuple[str, ...] = ("llama", "mamba", "mamba2")

# Per-size shape choices.  "small" is the real reference (~6-7M parameters with a 4096-token
# vocabulary); "micro" is for tests (a few thousand parameters, trains in milliseconds per step).
_FIELDS = {
    "llama": (
        "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
    ),
    "mamba": ("hidden_size", "num_hidden_layers", "state_size", "expand", "conv_kernel"),
    "mamba2": (
        "hidden_size", "num_hidden_layers", "state_size", "expand", "head_dim", "num_heads", "n_groups",
        "conv_kernel", "chunk_size",
    ),
}  # fmt: skip
_VALUES = {
    # small: 8 heads of 32 in 4 key/value groups (grouped-query attention like SmolLM2, with enough heads
    # that structured head pruning has a useful granularity); Mamba-2: 16 heads of 32 in 2 B/C groups,
    # 16 * 32 == expand * hidden_size, as Mamba2Config requires
    "small": {
        "llama": (256, 6, 8, 4, 688),
        "mamba": (256, 10, 16, 2, 4),
        "mamba2": (256, 9, 64, 2, 32, 16, 2, 4, 64),
    },
    "micro": {"llama": (32, 2, 4, 2, 64), "mamba": (32, 3, 4, 2, 4), "mamba2": (32, 3, 8, 2, 8, 8, 2, 4, 16)},
}  # fmt: skip
_SHAPES: dict[str, dict[str, dict[str, Any]]] = {
    size: {arch: dict(zip(_FIELDS[arch], values)) for arch, values in archs.items()}
    for size, archs in _VALUES.items()
}

SIZES: tuple[str, ...] = tuple(_SHAPES)


class SpecialIds:
    """Token ids the reference tokenizer reserves (see :mod:`prunekit.refmodels.tokenizer`)."""

    BOS = 0
    EOS = 1
    PAD = 2


def reference_config(
    arch: str,
    vocab_size: int,
    size: str = "small",
    max_position_embeddings: int = 1024,
    **overrides: Any,
) -> PretrainedConfig:
    """The transformers config for ``arch`` at a named ``size``, with the shared vocabulary.

    ``overrides`` replace individual fields (for experiments); the result is validated so that an
    inconsistent Mamba-2 head layout fails here with a clear message rather than deep in a forward pass.

    Raises:
        ValueError: unknown ``arch`` or ``size``, a vocabulary too small for the special tokens, or an
            inconsistent Mamba-2 layout.
    """
    check_arch(arch)
    if size not in _SHAPES:
        raise ValueError(f"unknown reference size {size!r}; expected one of {', '.join(SIZES)}")
    if vocab_size <= SpecialIds.PAD:
        raise ValueError(f"vocab_size must exceed the {SpecialIds.PAD + 1} special tokens, got {vocab_size}")
    fields = dict(_SHAPES[size][arch])
    fields.update(overrides)
    common = dict(
        vocab_size=vocab_size,
        bos_token_id=SpecialIds.BOS,
        eos_token_id=SpecialIds.EOS,
        pad_token_id=SpecialIds.PAD,
        tie_word_embeddings=True,  # all three tie, so embeddings cost the same everywhere
    )
    if arch == "llama":
        fields.setdefault("max_position_embeddings", max_position_embeddings)
        fields.setdefault("rms_norm_eps", 1e-5)
        return LlamaConfig(**common, **fields)
    if arch == "mamba":
        return MambaConfig(**common, **fields)
    _check_mamba2(fields)
    return Mamba2Config(**common, **fields)


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Total and non-embedding parameter counts; a tied embedding/LM-head matrix is counted once."""
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a shared tensor once
    embedding = model.get_input_embeddings().weight.numel()
    return {"total": total, "non_embedding": total - embedding}


def parameter_counts(vocab_size: int = 4096, size: str = "small") -> dict[str, dict[str, int]]:
    """Parameter counts of every reference architecture at ``size``, without allocating weights.

    The models are built on PyTorch's ``meta`` device, so this is instant even for large sizes.
    """
    counts = {}
    for arch in ARCHS:
        config = reference_config(arch, vocab_size, size)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        counts[arch] = count_parameters(model)
    return counts


def check_arch(arch: str) -> None:
    """Raise a ValueError naming the choices when ``arch`` has no reference config."""
    if arch not in ARCHS:
        raise ValueError(f"unknown reference architecture {arch!r}; expected one of {', '.join(ARCHS)}")


def _check_mamba2(fields: dict[str, Any]) -> None:
    """Mamba-2's head layout constraints, checked up front with the offending numbers in the message."""
    inner = fields.get("expand", 2) * fields["hidden_size"]
    heads, head_dim, groups = fields["num_heads"], fields["head_dim"], fields.get("n_groups", 1)
    if heads * head_dim != inner:
        raise ValueError(
            f"Mamba-2 needs num_heads * head_dim == expand * hidden_size; got {heads} * {head_dim} != {inner}"
        )
    if heads % groups:
        raise ValueError(f"Mamba-2 needs num_heads ({heads}) divisible by n_groups ({groups})")
    if fields.get("chunk_size", 256) < 1:
        raise ValueError(f"Mamba-2 chunk_size must be >= 1, got {fields['chunk_size']}")
