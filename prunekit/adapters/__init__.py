"""Per-family adapters. Adding a family is adding one module here (see docs/adapters.md)."""

from . import llama, mamba, mamba2  # noqa: F401  (register the built-in adapters)
from .base import ADAPTERS, Adapter, GenericAdapter, get_adapter, register_adapter

__all__ = ["ADAPTERS", "Adapter", "GenericAdapter", "get_adapter", "register_adapter"]
