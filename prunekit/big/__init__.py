"""Models larger than memory: layer-by-layer pruning from safetensors, written shard by shard."""

from .checkpoint import LazyCheckpoint
from .offload import OffloadResult, prune_offloaded

__all__ = ["prune_offloaded", "OffloadResult", "LazyCheckpoint"]
