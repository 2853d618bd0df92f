"""A model whose blocks stay on disk: a meta-device skeleton plus lazy reads from safetensors files.

``accelerate.init_empty_weights`` builds the model with every parameter on the meta device (no memory),
buffers real (rotary tables are computed, not stored). Parameters outside the blocks (embeddings, final
norm, LM head: a few percent of a large model) are loaded at once; a block's parameters are read only
while that block is being calibrated and pruned, then dropped back to meta.

Tensors are read with ``seek`` + ``readinto`` at the offsets the safetensors header gives, not through a
memory map: pages of a mapped file count towards the process's resident memory (and a container's
memory limit) for as long as the map lives, so mapping a 140 GB checkpoint would make the process look
140 GB large even though it only ever needs one block. The format is a little-endian u64 header length,
a JSON header ``{name: {dtype, shape, data_offsets}}`` and the raw bytes; no code is ever unpickled.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import torch

from .format import CheckpointError
from .load import weight_files

__all__ = ["LazyCheckpoint"]

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip
_MAX_HEADER = 100 * 1024 * 1024


class LazyCheckpoint:
    """Tensor names -> (file, dtype, shape, byte range), for single-file or sharded checkpoints."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).expanduser()
        if not (self.directory / "config.json").is_file():
            raise ValueError(f"{str(self.directory)!r} has no config.json: not a Hugging Face model")
        files = weight_files(self.directory)  # single file or the shards the index names
        self.entries: dict[str, tuple[Path, torch.dtype, list[int], int, int]] = {}
        for path in files:
            self._read_header(path)

    def _read_header(self, path: Path) -> None:
        if not path.is_file():
            raise CheckpointError(f"{self.directory}: the index lists {path.name}, which does not exist")
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) != 8:
                raise CheckpointError(f"{path}: not a safetensors file (too short)")
            (size,) = struct.unpack("<Q", raw)
            if size > _MAX_HEADER:
                raise CheckpointError(f"{path}: safetensors header of {size} bytes is implausible")
            try:
                header = json.loads(fh.read(size))
            except ValueError as err:
                raise CheckpointError(f"{path}: unreadable safetensors header ({err})") from err
        base = 8 + size
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info.get("dtype") not in _DTYPES:
                raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {info.get('dtype')!r}")
            start, end = info["data_offsets"]
            dtype = _DTYPES[info["dtype"]]
            numel = 1
            for d in info["shape"]:
                numel *= int(d)
            if end - start != numel * torch.empty((), dtype=dtype).element_size():
                raise CheckpointError(f"{path}: tensor {name!r} byte range does not match its shape")
            self.entries[name] = (path, dtype, list(info["shape"]), base + start, end - start)

    def get(self, name: str) -> torch.Tensor:
        """The tensor, read from disk into fresh memory."""
        if name not in self.entries:
            raise CheckpointError(f"{self.directory}: tensor {name!r} is missing from the checkpoint")
        path, dtype, shape, offset, nbytes = self.entries[name]
        buffer = bytearray(nbytes)
        with open(path, "rb") as fh:
            fh.seek(offset)
            if fh.readinto(buffer) != nbytes:
                raise CheckpointError(f"{path}: tensor {name!r} is truncated")
        if nbytes == 0:
            return torch.empty(shape, dtype=dtype)
        tensor = torch.frombuffer(buffer, dtype=dtype).reshape(shape)
        if sys.byteorder != "little":
            tensor = tensor.byteswap()  # pragma: no cover - safetensors is little-endian
        return tensor
