"""Pruning a model larger than memory: one block in memory at a time, the result written shard by shard.

:func:`offload_prune` (:func:`prunekit.prune_offloaded`) reads a safetensors checkpoint lazily
(:class:`prunekit.io.checkpoint.LazyCheckpoint`), runs the ordinary block-wise calibration engine with a
:class:`~prunekit.engine.calibration.BlockStream` that brings each block's weights in just before the block
runs and, once it is pruned and its outputs computed, writes it to its own output shard and drops it. Peak
memory is one block's weights, its statistics (a Hessian per layer for SparseGPT), the calibration
activations and the layers outside the blocks (embeddings, final norm, LM head), whatever the depth. The
pruned model is never assembled in memory: its shards, index, config and masks are written into a temporary
sibling directory that is renamed into place only when everything succeeded, so a failure leaves no partial
model behind.

Scope: unstructured and N:M methods with uniform per-block sparsity (magnitude, Wanda, SparseGPT, ...).
Structured pruning chooses units with a global view and rewrites shapes across the model, and gradient
methods need a full-model backward; both are refused here with the reason.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..io.checkpoint import LazyCheckpoint
from ..io.format import FORMAT, SECTION, SPARSITY_FILE, CheckpointError, mask_shard
from ..methods.statistics import Scope, of_scope
from ..spec import PruneSpec, prepare_calibration
from . import distributed, pipeline
from .calibration import BlockStream
from .memory import release_free_memory, use_mmap_for_large_buffers
from .report import PruneReport

__all__ = [
    "OffloadResult",
    "bind_param",
    "block_prefixes",
    "check_offloadable",
    "meta_skeleton",
    "offload_prune",
]
_SKIP_FILES = {"config.json", "model.safetensors", "model.safetensors.index.json"}


@dataclass
class OffloadResult:
    directory: Path
    method: str
    structure: str
    sparsity: float
    achieved: float
    seconds: float
    #: parameter name -> share of its entries pruned
    per_weight: dict[str, float] = field(default_factory=dict)
    #: the engine's report of the run (rows counted from what was written)
    report: PruneReport | None = None


def offload_prune(
    model_dir: str | Path,
    out_dir: str | Path,
    spec: PruneSpec,
    calibration: Any = None,
    device: str | torch.device | None = None,
    overwrite: bool = False,
) -> OffloadResult:
    """Prune the checkpoint in ``model_dir`` as ``spec`` asks, block by block, into ``out_dir``
    (:func:`prunekit.prune_offloaded` builds the spec). Everything is checked before a tensor is read."""
    t0 = time.perf_counter()
    check_offloadable(spec)
    needs = sorted(map(str, of_scope(spec.scorer().requires, Scope.BLOCK)))
    if needs and calibration is None:  # before the checkpoint is opened
        raise ValueError(f"method {spec.method!r} needs calibration data (statistics: {needs})")
    out = Path(out_dir).expanduser()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"output directory {str(out)!r} is not empty (pass overwrite=True to replace it)")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    ckpt = LazyCheckpoint(model_dir)
    model, aliases = meta_skeleton(ckpt)
    data = prepare_calibration(calibration, model, spec)
    resolved = pipeline.plan(model, spec, data)
    prefixes = block_prefixes(model, resolved.blocks)
    outside = [n for n in resolved.targeted if not any(n.startswith(p) for p in prefixes)]
    if outside:
        raise ValueError(f"offloaded pruning prunes weights inside the blocks only; {outside} lie outside")
    if resolved.experts:  # their per-expert views would outlive the parameters each block load replaces
        names = [s.name for s in resolved.experts]
        raise ValueError(
            f"offloaded pruning cannot prune mixture-of-experts weights yet ({names[0]} and "
            f"{len(names) - 1} more): prune the model in memory (prunekit.prune), or leave them out with "
            "ignore= (their names or 3-D parameter names)"
        )

    use_mmap_for_large_buffers()  # see .memory: otherwise the heap fragments block after block
    writer = _ShardWriter(out, ckpt, len(resolved.blocks), write=distributed.rank() == 0)
    resolved.stream = _DiskStream(model, ckpt, prefixes, aliases, device, writer)
    try:
        resolved.stream.load_outside()
        report = pipeline.execute(resolved)
        record = {
            "method": spec.method, "structure": str(spec.structure), "sparsity": spec.sparsity,
            "options": dict(resolved.scorer.config), "offloaded": True,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }  # fmt: skip
        writer.finish(resolved.stream.outside_state(), model.config, resolved.adapter.name, record)
    except BaseException:
        writer.abort()
        raise
    masked = sum(v[0] for v in writer.mask_counts.values())
    total = sum(v[1] for v in writer.mask_counts.values())
    return OffloadResult(
        out, spec.method, str(spec.structure), spec.sparsity, masked / total if total else 0.0,
        time.perf_counter() - t0, {k: m / n for k, (m, n) in writer.mask_counts.items()}, report,
    )  # fmt: skip


def check_offloadable(spec: PruneSpec) -> None:
    """What block-by-block pruning from disk cannot do, refused by name."""
    if spec.kind == "structured":
        raise ValueError(
            "offloaded pruning supports unstructured and N:M methods; structured pruning picks units "
            "with a global view and reshapes the whole model: load it in memory (prunekit.prune)"
        )
    full_model = sorted(map(str, of_scope(spec.scorer().requires, Scope.MODEL)))
    if full_model:
        raise ValueError(
            f"method {spec.method!r} needs gradients of the full model ({', '.join(full_model)}), which "
            "offloading cannot provide"
        )
    if spec.allocation.name != "uniform":
        raise ValueError(
            "offloaded pruning gives every block the requested sparsity: OWL's allocation needs a dense "
            "pass over all blocks first (load the model in memory, or allocation='uniform')"
        )


def meta_skeleton(ckpt: LazyCheckpoint) -> tuple[torch.nn.Module, dict[str, list[str]]]:
    """The model with parameters on the meta device, and each parameter's tied aliases."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(ckpt.directory, local_files_only=True)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()  # not done under init_empty_weights; aliases must be known before loading
    model.eval()
    by_id: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(param), []).append(name)
    aliases = {name: names for names in by_id.values() for name in names}
    stored = set(ckpt.entries)
    for names in by_id.values():
        if not stored & set(names):
            raise CheckpointError(f"{ckpt.directory}: tensor {names[0]!r} is missing from the checkpoint")
    unexpected = sorted(stored - set(aliases))
    if unexpected:
        raise CheckpointError(f"{ckpt.directory}: unexpected tensors {unexpected[:5]} for this config")
    return model, aliases


def block_prefixes(model: torch.nn.Module, blocks: list[torch.nn.Module]) -> list[str]:
    names = {id(m): n for n, m in model.named_modules()}
    return [names[id(b)] + "." for b in blocks]


def bind_param(model: torch.nn.Module, names: list[str], value: torch.Tensor) -> None:
    """Bind one new Parameter under every tied alias.

    The new parameter keeps the skeleton's ``requires_grad`` (True, as a model loaded in memory has it):
    the flag is not cosmetic, since torch's matmul folds a batched, non-contiguous input into one matrix
    product only when the weight needs no gradient, and the two paths sum in different orders (Mamba's
    ``x_proj`` reads a transposed input, so its outputs would differ in the last bit from in-memory
    pruning of the same checkpoint).
    """
    owner, _, attr = names[0].rpartition(".")
    old = model.get_submodule(owner)._parameters[attr]
    param = torch.nn.Parameter(value, requires_grad=old.requires_grad if old is not None else True)
    for name in names:
        owner, _, attr = name.rpartition(".")
        model.get_submodule(owner)._parameters[attr] = param


class _DiskStream(BlockStream):
    def __init__(self, model, ckpt, prefixes, aliases, device, writer) -> None:
        super().__init__()
        self.model, self.ckpt, self.device, self.writer = model, ckpt, device, writer
        self.aliases = aliases
        self.block_params: list[list[str]] = [[] for _ in prefixes]
        self.outside: list[str] = []
        for name in dict.fromkeys(n for names in aliases.values() for n in names[:1]):
            index = next((i for i, p in enumerate(prefixes) if name.startswith(p)), None)
            (self.outside if index is None else self.block_params[index]).append(name)
        self.masks: dict[str, torch.Tensor] = {}

    def _stored_name(self, name: str) -> str:
        return next(n for n in self.aliases[name] if n in self.ckpt.entries)

    def _load(self, name: str) -> None:
        value = self.ckpt.get(self._stored_name(name)).to(self.device)
        bind_param(self.model, self.aliases[name], value)

    def load_outside(self) -> None:
        for name in self.outside:
            self._load(name)

    def onload(self, index: int, block: torch.nn.Module) -> None:
        for name in self.block_params[index]:
            self._load(name)

    def keep_mask(self, name: str, mask: torch.Tensor) -> None:
        self.masks[f"{name}.weight"] = mask.to("cpu")

    def offload(self, index: int, block: torch.nn.Module) -> None:
        params = dict(self.model.named_parameters())
        state = {n: params[n].detach().to("cpu").contiguous() for n in self.block_params[index]}
        masks = {n: m for n, m in self.masks.items() if n in state}
        for n in masks:
            self.zeros[n] = (int((state[n] == 0).sum()), state[n].numel())
        self.writer.write(index, state, masks)
        for n in masks:
            del self.masks[n]
        for name in self.block_params[index]:
            bind_param(self.model, self.aliases[name], torch.empty_like(params[name], device="meta"))
        del params, state, masks
        release_free_memory()

    def outside_state(self) -> dict[str, torch.Tensor]:
        params = dict(self.model.named_parameters())
        return {self._stored_name(n): params[n].detach().to("cpu").contiguous() for n in self.outside}


class _ShardWriter:
    """Shards into a temporary sibling directory, renamed over ``out`` when complete."""

    def __init__(self, out: Path, ckpt: LazyCheckpoint, n_blocks: int, write: bool) -> None:
        self.out, self.ckpt, self.write_enabled = out, ckpt, write
        self.n = n_blocks + 1
        self.tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
        self.weight_map: dict[str, str] = {}
        self.mask_files: list[str] = []
        self.mask_counts: dict[str, tuple[int, int]] = {}
        self.sparsity: dict[str, dict] = {}
        self.total_size = 0
        if write:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp.mkdir(parents=True)

    def _shard(self, k: int, state: dict[str, torch.Tensor]) -> None:
        name = f"model-{k + 1:05d}-of-{self.n:05d}.safetensors"
        if self.write_enabled:
            save_file(state, str(self.tmp / name), metadata={"format": "pt"})
        for key, t in state.items():
            self.weight_map[key] = name
            self.total_size += t.numel() * t.element_size()

    def write(self, index: int, state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> None:
        self._shard(index, state)
        for name, mask in masks.items():
            weight = state[name]
            self.mask_counts[name] = (int(mask.sum()), mask.numel())
            self.sparsity[name] = {
                "structure": "offloaded", "shape": list(mask.shape), "masked": int(mask.sum()),
                "sparsity": float(mask.float().mean()), "zeros": int((weight == 0).sum()),
                "masked_nonzero": int((weight[mask] != 0).sum()),
            }  # fmt: skip
        if masks:
            file = mask_shard(index + 1, self.n)
            self.mask_files.append(file)
            if self.write_enabled:
                save_file(masks, str(self.tmp / file))

    def finish(self, outside: dict[str, torch.Tensor], config: Any, adapter: str, record: dict) -> None:
        self._shard(self.n - 1, outside)
        if not self.write_enabled:
            return
        index = {
            "metadata": {"total_size": self.total_size},
            "weight_map": dict(sorted(self.weight_map.items())),
        }
        (self.tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        raw = json.loads((self.ckpt.directory / "config.json").read_text())
        section = raw.get(SECTION) or {"format": FORMAT, "layers": None}
        section["adapter"] = adapter
        section["records"] = [*section.get("records", []), record]
        section["masks"] = self.mask_files
        raw[SECTION] = section
        (self.tmp / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
        (self.tmp / SPARSITY_FILE).write_text(json.dumps(self.sparsity, indent=2) + "\n")
        for file in self.ckpt.directory.iterdir():  # tokenizer, generation config, ...
            if file.is_file() and file.name not in _SKIP_FILES and not file.name.endswith(".safetensors"):
                if not file.name.startswith("prunekit_"):
                    shutil.copy2(file, self.tmp / file.name)
        if self.out.exists():
            shutil.rmtree(self.out)
        self.tmp.rename(self.out)

    def abort(self) -> None:
        if self.write_enabled:
            shutil.rmtree(self.tmp, ignore_errors=True)
