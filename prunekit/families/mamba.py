"""Mamba (v1) and Falcon-Mamba: one mixer per block (inner channels, dt rank, state size)."""

from __future__ import annotations

from .base import Adapter, register_adapter
from .parts import MambaMixer


@register_adapter
class MambaAdapter(Adapter):
    name = "mamba"
    model_types = ("mamba", "falcon_mamba")
    parts = (MambaMixer(),)
    prunes_residual = True
