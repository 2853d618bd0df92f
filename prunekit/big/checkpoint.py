"""A model whose blocks stay on disk: a meta-device skeleton plus lazy reads from safetensors.

``accelerate.init_empty_weights`` builds the model with every parameter on the meta device (no memory),
buffers real (rotary tables are computed, not stored). Parameters outside the blocks (embeddings, final
norm, LM head: a few percent of a large model) are loaded at once; a block's parameters are read from
the memory-mapped safetensors files only while that block is being calibrated and pruned, then dropped
back to meta. Reading one tensor with ``safe_open`` touches only that tensor's pages.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..io.format import CheckpointError

__all__ = ["LazyCheckpoint"]


class LazyCheckpoint:
    """Tensor names -> file, for a single-file or sharded (``model.safetensors.index.json``) checkpoint."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).expanduser()
        if not (self.directory / "config.json").is_file():
            raise ValueError(
                f"{str(self.directory)!r} has no config.json: not a Hugging Face model directory"
            )
        index = self.directory / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        elif (self.directory / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            raise CheckpointError(
                f"{self.directory} has no model.safetensors or model.safetensors.index.json "
                "(offloaded pruning reads safetensors only)"
            )
        self._handles: dict[str, Any] = {}
        self.where: dict[str, str] = {}
        for name in files:
            path = self.directory / name
            if not path.is_file():
                raise CheckpointError(f"{self.directory}: the index lists {name}, which does not exist")
            handle = safe_open(str(path), "pt")
            self._handles[name] = handle
            for key in handle.keys():
                self.where[key] = name

    def get(self, name: str) -> torch.Tensor:
        if name not in self.where:
            raise CheckpointError(f"{self.directory}: tensor {name!r} is missing from the checkpoint")
        return self._handles[self.where[name]].get_tensor(name)

    def shape(self, name: str) -> list[int]:
        return list(self._handles[self.where[name]].get_slice(name).get_shape())

    def nbytes(self) -> int:
        """Total size of the stored tensors (what loading the whole model would take)."""
        total = 0
        for name, file in self.where.items():
            sl = self._handles[file].get_slice(name)
            numel = 1
            for d in sl.get_shape():
                numel *= d
            total += numel * torch.empty((), dtype=_DTYPES[sl.get_dtype()]).element_size()
        return total

    def close(self) -> None:
        self._handles.clear()


_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip
