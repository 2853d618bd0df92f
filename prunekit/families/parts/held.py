"""A mixer kept whole: a part that owns its module (so the block belongs to the family and reload checks
its width) but names none of its groups, so nothing in it is pruned."""

from __future__ import annotations

import torch

from .base import Part


class HeldMixer(Part):
    """A mixer no part can shrink yet (Zamba's Mamba mixer stacks its selection weights per mixer head in
    x_proj_weight/dt_proj_weight): its groups get no role, so they stay; it records its inner width, so
    a block holding only it is still a block of the family and a reload checks the width."""

    kind = "held_mixer"
    paths = ("mamba", "mamba_decoder.mamba")
    config_fields: dict = {}

    def matches(self, module: torch.nn.Module) -> bool:
        return hasattr(module, "out_proj") and hasattr(module, "in_proj")

    def restate(self, module: torch.nn.Module, model: torch.nn.Module) -> dict:
        return {"intermediate_size": int(module.out_proj.in_features)}
