"""Per-family adapters, composed of typed block parts. Adding a family is adding one module here (see
docs/adapters.md); :func:`support` says what a family gets."""

from . import families, llama, mamba, mamba2  # noqa: F401  (register the built-in adapters)
from .base import ADAPTERS, Adapter, GenericAdapter, adapter_for_config, get_adapter, register_adapter
from .blocks import UnsupportedFamilyError, find_blocks
from .components import Component
from .support import Support, support

__all__ = [
    "ADAPTERS",
    "Adapter",
    "Component",
    "GenericAdapter",
    "Support",
    "UnsupportedFamilyError",
    "adapter_for_config",
    "find_blocks",
    "get_adapter",
    "register_adapter",
    "support",
]
