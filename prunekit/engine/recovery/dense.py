"""The dense reference of block-wise reconstruction, one block at a time.

Reconstruction fits each pruned block to what the *dense* block computes on the same inputs. The dense
blocks come from a model in memory (:class:`ModelDense`) or from a checkpoint directory read lazily
(:class:`CheckpointDense`: a meta-device skeleton whose block weights are read from the safetensors
files only while that block is the target, then dropped), so reconstructing never needs a second whole
model in memory. Both check, before anything is trained, that the reference has the pruned model's
blocks and parameters, with shapes the pruned ones can have come from (equal, or larger where
structured pruning shrank them) and the same hidden size.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...families import get_adapter
from ...io.checkpoint import LazyCheckpoint
from ..offload import bind_param, block_prefixes, meta_skeleton


class DenseBlocks:
    """``block(i)`` is the dense block ``i`` ready to run; ``release(i)`` frees it again."""

    shapes: list[dict[str, tuple[int, ...]]]
    hidden: int | None = None

    def block(self, index: int) -> torch.nn.Module:
        raise NotImplementedError

    def release(self, index: int) -> None:
        """Nothing to free for a model in memory."""

    def check(self, model: torch.nn.Module, blocks: list[torch.nn.Module]) -> None:
        """Raise ``ValueError`` naming the first block or parameter the reference does not match."""
        if len(self.shapes) != len(blocks):
            raise ValueError(f"the dense reference has {len(self.shapes)} blocks, the model {len(blocks)}")
        names = {id(m): n for n, m in model.named_modules()}
        added = set(getattr(getattr(model, "config", None), "prunekit_added_biases", None) or [])
        for index, (block, dense) in enumerate(zip(blocks, self.shapes)):
            prefix = names[id(block)] + "."
            ours = {
                n: tuple(p.shape)
                for n, p in block.named_parameters()
                if not (n.endswith(".bias") and prefix + n.removesuffix(".bias") in added)
            }  # biases that pruning created (bias compensation) have no dense counterpart
            missing = sorted(set(ours) - set(dense))
            if missing:
                raise ValueError(f"the dense reference's block {index} has no parameter {missing[0]!r}")
            for name, shape in ours.items():
                ref = dense[name]
                if len(ref) != len(shape) or any(a > b for a, b in zip(shape, ref)):
                    raise ValueError(
                        f"block {index} parameter {name!r} has shape {list(shape)}, which pruning cannot "
                        f"have made from the dense reference's {list(ref)}: is it the same model?"
                    )
        width = _hidden(model)
        if width is not None and self.hidden is not None and width != self.hidden:
            raise ValueError(f"the dense reference's hidden size is {self.hidden}, the model's {width}")


class ModelDense(DenseBlocks):
    """Dense blocks of a model held in memory."""

    def __init__(self, dense: torch.nn.Module) -> None:
        self.blocks = get_adapter(dense).layers(dense)
        self.shapes = [{n: tuple(p.shape) for n, p in b.named_parameters()} for b in self.blocks]
        self.hidden = _hidden(dense)

    def block(self, index: int) -> torch.nn.Module:
        return self.blocks[index].eval()


class CheckpointDense(DenseBlocks):
    """Dense blocks read from a safetensors checkpoint directory when needed."""

    def __init__(
        self, directory: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
    ) -> None:
        self.ckpt = LazyCheckpoint(directory)
        self.model, self.aliases = meta_skeleton(self.ckpt)
        self.blocks = get_adapter(self.model).layers(self.model)
        self.prefixes = block_prefixes(self.model, self.blocks)
        self.device, self.dtype = torch.device(device), dtype
        self.shapes = []
        for prefix in self.prefixes:
            names = {n for n in self.aliases if n.startswith(prefix)}
            self.shapes.append({n[len(prefix) :]: tuple(self._entry(n)[2]) for n in names})
        self.hidden = _hidden(self.model)

    def _entry(self, name: str):
        stored = next(n for n in self.aliases[name] if n in self.ckpt.entries)
        return self.ckpt.entries[stored]

    def _names(self, index: int) -> list[str]:
        return sorted(n for n in self.aliases if n.startswith(self.prefixes[index]))

    def block(self, index: int) -> torch.nn.Module:
        for name in self._names(index):
            stored = next(n for n in self.aliases[name] if n in self.ckpt.entries)
            value = self.ckpt.get(stored).to(self.device, self.dtype or None)
            bind_param(self.model, self.aliases[name], value)
        return self.blocks[index].to(self.device).eval()

    def release(self, index: int) -> None:
        params = dict(self.model.named_parameters())
        for name in self._names(index):
            bind_param(self.model, self.aliases[name], torch.empty_like(params[name], device="meta"))


def _hidden(model: torch.nn.Module) -> int | None:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(emb, "weight", None)
    return int(weight.shape[-1]) if weight is not None else None
