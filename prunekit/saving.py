"""Public entry point for saving and loading pruned models; the implementation lives in :mod:`prunekit.io`."""

from __future__ import annotations

from .io import (
    FORMAT,
    MASKS_FILE,
    REPORT_FILE,
    SPARSITY_FILE,
    CheckpointError,
    from_pretrained,
    is_prunekit_dir,
    load_masks,
    save_pretrained,
)

__all__ = [
    "FORMAT",
    "MASKS_FILE",
    "REPORT_FILE",
    "SPARSITY_FILE",
    "CheckpointError",
    "from_pretrained",
    "is_prunekit_dir",
    "load_masks",
    "save_pretrained",
]
