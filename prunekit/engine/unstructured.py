"""Unstructured and N:M pruning of weight matrices, with or without calibration statistics.

Weights-only scorers (magnitude) score every targeted matrix directly. Scorers that read activation
statistics run through the block-wise calibration engine: each block is scored on its inputs and
pruned before the next block's inputs are computed. Gradient statistics are computed up front (they
need the whole model). Allocation decides each block's sparsity (uniform, or OWL from a dense pass).

Every weight that changes is backed up first, so an error half-way (NaN activations, a failing
Cholesky) restores the model exactly before it propagates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..methods.allocation import outlier_ratio, owl_sparsities
from ..methods.scorers.base import Scorer
from ..methods.scorers.wanda import activation_norms
from ..methods.select import NM, Selection
from .calibration import BlockStream, run_blockwise
from .gradients import gradient_norms

ACTIVATION_STATS = frozenset({"sq_norm", "hessian", "mean", "var"})


@dataclass
class UnstructuredResult:
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    #: module name -> relative layer reconstruction error ||WX - ŴX||² / ||WX||² (when a Hessian exists)
    errors: dict[str, float] = field(default_factory=dict)
    #: block index -> sparsity used (OWL makes them differ)
    block_sparsity: dict[int, float] = field(default_factory=dict)


def as_matrix(module: torch.nn.Module) -> torch.Tensor:
    """The weight as 2-D [outputs, inputs-per-output] (a depthwise Conv1d's taps are its columns)."""
    w = module.weight
    return w.reshape(w.shape[0], -1)


def _shaped_stats(module: torch.nn.Module, stats: dict) -> dict:
    """Per-feature statistics shaped to broadcast over :func:`as_matrix`'s view."""
    out = dict(stats)
    for key in ("sq_norm", "mean", "var"):
        if key in out:
            out[key] = (
                out[key].reshape(-1, 1) if isinstance(module, torch.nn.Conv1d) else out[key].reshape(1, -1)
            )
    return out


def relative_error(w_old: torch.Tensor, w_new: torch.Tensor, hessian: torch.Tensor) -> float:
    """||(W - Ŵ)X||² / ||WX||² from H = 2XXᵀ/n (the 2/n cancels); fp32, one product each."""
    h = hessian.float()
    d = w_old.float() - w_new.float()
    num = float(((d @ h) * d).sum())
    den = float(((w_old.float() @ h) * w_old.float()).sum())
    return num / den if den > 0 else 0.0


class _Backup:
    """Original values of every weight touched, restored on failure."""

    def __init__(self) -> None:
        self.saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def keep(self, weight: torch.Tensor) -> None:
        if id(weight) not in self.saved:
            self.saved[id(weight)] = (weight, weight.detach().clone())

    @torch.no_grad()
    def restore(self) -> None:
        for weight, original in self.saved.values():
            weight.copy_(original)


def prune_unstructured(
    model: torch.nn.Module,
    blocks: list[torch.nn.Module],
    targeted: dict[str, torch.nn.Module],
    scorer: Scorer,
    sparsity: float,
    pattern: NM | None,
    per_row: bool,
    calibration: torch.Tensor | None,
    allocation: str = "uniform",
    owl_lambda: float = 0.08,
    owl_m: float = 5.0,
    calibration_mode: str = "sequential",
    batch_size: int = 8,
    progress: bool = False,
    taps: dict | None = None,
    stream: BlockStream | None = None,
) -> UnstructuredResult:
    """Prune every targeted weight; see the module docstring.

    With ``stream`` (an offloaded model, :mod:`prunekit.engine.offload`) each block's weights are
    brought in before and written out after it is pruned, masks go to ``stream.keep_mask`` instead of
    the result, and no in-memory backup is kept: the checkpoint on disk is the backup.
    """
    result = UnstructuredResult()
    in_memory = stream is None
    stream = stream or BlockStream()  # blocks already in memory: onload/offload do nothing
    keep_mask = result.masks.__setitem__ if in_memory else stream.keep_mask
    needs = scorer.needs & ACTIVATION_STATS
    per_block = _by_block(model, blocks, targeted)
    if (needs or allocation == "owl") and per_block["outside"]:
        outside = ", ".join(sorted(per_block["outside"]))
        raise ValueError(
            f"method {scorer.name!r} needs activation statistics, but {outside} lies outside the blocks"
        )
    backup = _Backup()
    try:
        grads = {}
        if "grad" in scorer.needs:
            weights = {name: mod.weight for name, mod in targeted.items()}
            grads = gradient_norms(
                model, calibration, weights, float(scorer.config.get("scale", 100.0)), progress
            )
        block_s = {i: sparsity for i in range(len(blocks))}
        if allocation == "owl" and pattern is None:
            block_s = _owl(
                model,
                blocks,
                per_block["inside"],
                calibration,
                sparsity,
                owl_lambda,
                owl_m,
                batch_size,
                progress,
                taps,
            )
        result.block_sparsity = block_s

        def prune_modules(index: int, mods: dict[str, torch.nn.Module], stats: dict) -> None:
            selection = Selection(block_s.get(index, sparsity), pattern, per_row)
            for name, mod in mods.items():
                st = _shaped_stats(mod, stats.get(name, {}))
                if name in grads:
                    st["grad"] = grads[name].reshape(mod.weight.shape[0], -1)
                matrix = as_matrix(mod).detach()
                new, mask = scorer.prune_matrix(matrix, st, selection)
                if "hessian" in st:
                    result.errors[name] = relative_error(matrix, new, st["hessian"])
                if in_memory:
                    backup.keep(mod.weight)
                with torch.no_grad():
                    mod.weight.copy_(new.reshape(mod.weight.shape).to(mod.weight.dtype))
                keep_mask(name, mask.reshape(mod.weight.shape))

        if needs:
            run_blockwise(
                model,
                blocks,
                calibration,
                per_block["inside"],
                needs,
                on_block=lambda i, _b, stats: prune_modules(i, per_block["inside"][i], stats),
                mode=calibration_mode,
                batch_size=batch_size,
                progress=progress,
                desc=f"{scorer.name} blocks",
                taps=taps,
                stream=stream,
            )
        else:
            for i, mods in tqdm(list(enumerate(per_block["inside"])), desc="scoring", disable=not progress):
                stream.onload(i, blocks[i])
                prune_modules(i, mods, {})
                stream.offload(i, blocks[i])
        if per_block["outside"]:
            prune_modules(-1, per_block["outside"], {})
    except BaseException:
        backup.restore()
        raise
    return result


def _by_block(model, blocks, targeted) -> dict:
    names = {id(m): n for n, m in model.named_modules()}
    prefixes = [names[id(b)] + "." for b in blocks]
    inside: list[dict[str, torch.nn.Module]] = [{} for _ in blocks]
    outside: dict[str, torch.nn.Module] = {}
    for name, mod in targeted.items():
        index = next((i for i, p in enumerate(prefixes) if name.startswith(p)), None)
        (outside if index is None else inside[index])[name] = mod
    return {"inside": inside, "outside": outside}


def _owl(
    model, blocks, inside, calibration, sparsity, lam, m, batch_size, progress, taps
) -> dict[int, float]:
    """OWL's dense pass: outlier ratio of each block's Wanda scores, then the allocation."""
    ratios: dict[int, float] = {}

    def measure(index: int, _block, stats: dict) -> None:
        scores = [
            as_matrix(mod).detach().abs().float() * activation_norms(_shaped_stats(mod, stats[name]))
            for name, mod in inside[index].items()
        ]
        ratios[index] = outlier_ratio(scores, m) if scores else 0.0

    run_blockwise(
        model,
        blocks,
        calibration,
        inside,
        frozenset({"sq_norm"}),
        measure,
        mode="dense",
        batch_size=batch_size,
        progress=progress,
        desc="OWL outliers",
        taps=taps,
    )
    sizes = [sum(mod.weight.numel() for mod in inside[i].values()) for i in range(len(blocks))]
    active = [i for i in range(len(blocks)) if sizes[i]]
    alloc = owl_sparsities([ratios[i] for i in active], [sizes[i] for i in active], sparsity, lam)
    return {i: s for i, s in zip(active, alloc)}
