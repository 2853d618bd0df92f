"""Per-family adapters. Adding a family is adding one module here (see docs/adapters.md)."""

from . import llama, mamba, mamba2  # noqa: F401  (register the built-in adapters)
from .base import ADAPTERS, Adapter, GenericAdapter, adapter_for_config, get_adapter, register_adapter
from .components import Component

__all__ = [
    "ADAPTERS",
    "Adapter",
    "Component",
    "GenericAdapter",
    "adapter_for_config",
    "get_adapter",
    "register_adapter",
]
