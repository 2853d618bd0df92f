"""Mamba-2: one mixer per block (SSM heads grouped by their B/C group, state dims)."""

from __future__ import annotations

import torch

from .base import Adapter, register_adapter
from .parts import Mamba2Mixer


@register_adapter
class Mamba2Adapter(Adapter):
    name = "mamba2"
    model_types = ("mamba2",)
    parts = (Mamba2Mixer(),)
    prunes_residual = True

    def plain_config_fields(self, model: torch.nn.Module, per_layer: list[dict]) -> dict | None:
        """Mamba2Config derives the inner width as ``expand * hidden_size`` (``expand`` an int) and checks
        it against ``num_heads * head_dim``: uniform blocks are expressible only when the inner width is a
        multiple of the hidden size."""
        fields = super().plain_config_fields(model, per_layer)
        hidden = int(model.config.hidden_size)
        if fields is None or fields["intermediate_size"] % hidden:
            return None
        return {**fields, "expand": fields["intermediate_size"] // hidden}

    def base_config_fields(self, model: torch.nn.Module, per_layer: list[dict]) -> dict:
        """``num_heads`` must agree with ``expand`` for the config to validate at all."""
        cfg = model.config
        fields = super().base_config_fields(model, per_layer)
        fields.pop("intermediate_size", None)
        return {**fields, "num_heads": int(cfg.expand) * int(cfg.hidden_size) // int(cfg.head_dim)}
