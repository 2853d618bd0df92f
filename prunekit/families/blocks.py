"""Finding a model's blocks: the repeated modules the block-wise engine walks, wherever they live.

Families keep their blocks at different paths (``model.layers``, ``model.decoder.layers``,
``transformer.h``, ``backbone.layers``, ``gpt_neox.layers``), so no path is assumed: the blocks are the
``ModuleList`` holding the most parameters. A model with no such list is refused with its family's name,
instead of silently yielding no blocks (and then no weights to prune).
"""

from __future__ import annotations

import torch


class UnsupportedFamilyError(ValueError):
    """The model's family cannot be pruned the way it was asked (the message names the family and what is
    missing). Raised before anything is changed."""


#: config fields that say a family routes tokens to experts, or mixes state-space layers in
MOE_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
SSM_FIELDS = ("mamba_d_state", "mamba_n_heads", "ssm_state_size", "mamba_expand", "linear_num_value_heads")


def missing_parts(config) -> str:
    """What an adapter for this family would need, from its config: the refusal's explanation."""
    text = getattr(config, "get_text_config", lambda: config)()
    needs = []
    if any(isinstance(getattr(text, f, None), int) and getattr(text, f) > 1 for f in MOE_FIELDS):
        needs.append(
            "mixture-of-experts layers in a layout no family adapter states yet (routed 3-D experts with "
            "a router are supported where the family's attention and MLP are)"
        )
    if any(getattr(text, f, None) for f in SSM_FIELDS):
        needs.append("state-space or linear-attention mixers of a kind no part describes yet")
    what = "; it has " + " and ".join(needs) if needs else ""
    return (
        f"it has no prunekit family adapter{what}. Unstructured and N:M pruning still work (every linear "
        "layer and expert matrix); docs/adapters.md lists the supported families and how to add one"
    )


def family_name(model: torch.nn.Module) -> str:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    return f"{model_type!r} ({type(model).__name__})" if model_type else type(model).__name__


def find_blocks(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """``(name, block)`` of the model's blocks, in order.

    Raises:
        UnsupportedFamilyError: the model has no ``ModuleList`` of blocks holding parameters.
    """
    best: tuple[int, str, torch.nn.ModuleList] | None = None
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.ModuleList) or len(mod) == 0:
            continue
        count = sum(p.numel() for p in mod.parameters())
        if count and all(any(True for _ in block.parameters()) for block in mod):
            if best is None or count > best[0]:
                best = (count, name, mod)
    if best is None:
        raise UnsupportedFamilyError(
            f"cannot find the blocks of {family_name(model)}: it has no ModuleList of blocks with weights"
        )
    _count, name, blocks = best
    return [(f"{name}.{i}", block) for i, block in enumerate(blocks)]
