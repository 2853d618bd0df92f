"""BESA's block-wise executor: learn every row's sparsity so that each block's output error is minimal
while the block meets its target, one block at a time on the calibration engine.

For each block, the engine hands over its calibration inputs (after the pruned blocks before it) and its
dense outputs on them (or, with ``reference="dense"``, the dense model's outputs of that block). Every
targeted matrix gets a :class:`~prunekit.methods.besa.RowSparsity` over its importance ranks; the block
then runs, one calibration sequence per step, with its weights replaced by ``W ⊙ mask`` (through
``torch.func.functional_call``, so any code that reads a weight sees the masked one: Mamba's scan,
Conv1D, the per-expert Linears of a MoE layer), and the loss

    sum over hidden columns of ||Y - Ŷ||² / ||Y||² / hidden  +  beta · ((s_block - s*) / s*)²

trains the logits (and, with ``lora_rank``, low-rank adapters merged before the final mask). The
learned row sparsities are then rounded so that the block prunes exactly ``int(s* · weights)`` weights
(:func:`~prunekit.methods.besa.exact_counts`), and the block's weights are written once.

Training runs Mamba-1 blocks through the project's linear-time CPU scan (the stock one's backward is
quadratic in the sequence length); Mamba-2 and attention run as transformers computes them.

Only the logits and adapters receive gradients (``torch.autograd.grad``): the model's own parameters,
their ``requires_grad`` and their ``.grad`` are never touched. Every weight written is backed up and
restored if anything fails later in the run.
"""

from __future__ import annotations

import importlib
import math

import torch
from tqdm.auto import tqdm

from ..families.mamba_scan import linear_mamba_scan
from ..methods.besa import RowSparsity, block_sparsity, exact_counts, ranks, smooth_range, sparsity_penalty
from ..methods.scorers import Scorer, get_scorer
from ..methods.statistics import ModuleStats, Scope, of_scope
from . import distributed
from .calibration import BlockIO, BlockStream, run_blockwise
from .experts import split_experts
from .plan import Plan
from .unstructured import (
    UnstructuredResult,
    WeightBackup,
    as_matrix,
    as_weight,
    block_allocation,
    by_block,
    matrix_stats,
    per_sequence,
)


def prune_besa(plan: Plan) -> UnstructuredResult:
    """Prune ``plan.targeted`` with BESA (``plan.scorer`` holds its options); see the module docstring."""
    scorer = plan.scorer
    if distributed.active():
        raise ValueError(
            "besa trains each block on every calibration sequence; it does not run under torchrun"
        )
    if of_scope(scorer.requires, Scope.MODEL):
        raise ValueError(
            f"besa ranks weights with {scorer.config['importance']!r}, which needs full-model statistics"
        )
    per_block = by_block(plan.model, plan.blocks, plan.targeted)
    if per_block["outside"]:
        outside = ", ".join(sorted(per_block["outside"]))
        raise ValueError(f"besa reconstructs block outputs, but {outside} lies outside the blocks")
    _check_row_blocks(plan.targeted, int(scorer.config["row_block"]))
    result = UnstructuredResult()
    backup = WeightBackup() if plan.stream is None else None
    try:
        with split_experts(plan.experts):
            result.block_sparsity = block_allocation(plan, per_block["inside"])
            _check_targets(result.block_sparsity, scorer)
            trainer = _BlockTrainer(plan, per_block["inside"], result, backup)
            run_blockwise(
                plan.model, plan.blocks, plan.calibration, per_block["inside"], scorer.requires,
                on_block=trainer, mode=plan.spec.calibration.mode,
                batch_size=plan.spec.calibration.batch_size, progress=plan.spec.progress, desc="besa blocks",
                taps=plan.taps, stream=plan.stream, with_io=True,
                dense_path=scorer.config["reference"] == "dense",
            )  # fmt: skip
    except BaseException:
        if backup is not None:
            backup.restore()
        raise
    return result


def _check_row_blocks(targeted: dict[str, torch.nn.Module], row_block: int) -> None:
    """Every targeted matrix must split into whole blocks of ``row_block`` rows."""
    for name, mod in targeted.items():
        rows = as_matrix(mod).shape[0]
        if rows % row_block:
            raise ValueError(
                f"besa option row_block={row_block} does not divide the {rows} rows of {name}: "
                "its rows cannot share sparsities in blocks of that size"
            )


def _check_targets(targets: dict[int, float], scorer: Scorer) -> None:
    """With sigmoid smoothing a row's expected sparsity stays inside :func:`smooth_range`."""
    if not scorer.config["smooth"]:
        return
    lo, hi = smooth_range(float(scorer.config["step"]), float(scorer.config["spread"]))
    outside = {i: s for i, s in targets.items() if s > 0 and not lo < s < hi}
    if outside:
        shown = {i: round(s, 4) for i, s in outside.items()}
        raise ValueError(
            f"besa with smooth=True and spread={scorer.config['spread']} learns row sparsities inside "
            f"({lo:.3f}, {hi:.3f}); block targets {shown} lie outside: raise spread or pass smooth=False"
        )


class _BlockTrainer:
    """The ``on_block`` callback: trains one block's row sparsities and writes its pruned weights."""

    def __init__(
        self, plan: Plan, inside: list[dict[str, torch.nn.Module]], result: UnstructuredResult, backup
    ):
        self.plan, self.inside, self.result, self.backup = plan, inside, result, backup
        self.config = plan.scorer.config
        self.importance = plan.scorer.importance()
        self.stream = plan.stream or BlockStream()

    def __call__(
        self, index: int, block: torch.nn.Module, stats: dict[str, ModuleStats], io: BlockIO
    ) -> None:
        target = self.result.block_sparsity[index]
        mods = self.inside[index]
        if target <= 0:
            keep_mask = self.stream.keep_mask if self.backup is None else self.result.masks.__setitem__
            for name, mod in mods.items():
                keep_mask(name, torch.zeros_like(mod.weight, dtype=torch.bool))
            return
        if not mods:
            return
        prefix = self.plan.layer_names[index] + "."
        stats = per_sequence(stats, self.plan.expert_targets, self.plan.calibration)
        layers = {name: self._row_sparsity(name, mod, stats.get(name)) for name, mod in mods.items()}
        adapters = self._adapters(layers, index)
        targets = io.dense_outputs if io.dense_outputs is not None else io.outputs
        samples = [(x[k : k + 1], y[k : k + 1]) for x, y in zip(io.inputs, targets) for k in range(len(x))]

        def weights(hard_counts=None) -> dict[str, torch.Tensor]:
            out = {}
            for name, mod in mods.items():
                r, w = layers[name], as_matrix(mod).detach()
                if name in adapters:
                    w = w + adapters[name].delta().to(w.dtype)
                mask = r.mask() if hard_counts is None else r.hard_mask(hard_counts[name])
                out[name[len(prefix) :] + ".weight"] = as_weight(mod, w * mask.to(w.dtype))
            return out

        self._train(index, block, io, samples, layers, adapters, weights, target)
        with torch.no_grad():
            rows = list(layers.values())
            counts = exact_counts([r.row_sparsities() for r in rows], [r.columns for r in rows], target)
            final = dict(zip(layers, counts))
            new = weights(final)
            batches = list(zip(io.inputs, targets))
            self.result.errors[self.plan.layer_names[index]] = _relative_error(block, io, batches, new)
            self._write(mods, layers, final, new, prefix)

    def _row_sparsity(self, name: str, mod: torch.nn.Module, stats: ModuleStats | None) -> RowSparsity:
        st = matrix_stats(mod, stats)
        importance = self.importance
        if name in self.plan.expert_targets and not st.n_tokens:
            self.result.notes.append(
                f"{name}: no calibration token was routed to this expert; its weights are ranked by "
                f"magnitude, not {importance.name}"
            )
            importance = get_scorer("magnitude")
        scores = importance.weight_scores(as_matrix(mod).detach(), st)
        c = self.config
        return RowSparsity(
            ranks(scores), float(c["step"]), int(c["row_block"]), bool(c["smooth"]), float(c["spread"])
        )

    def _adapters(self, layers: dict[str, RowSparsity], index: int) -> dict[str, _LowRank]:
        """LoRA adapters of rank ``lora_rank`` for every matrix with both sides above it (noted otherwise)."""
        rank = int(self.config["lora_rank"])
        out: dict[str, _LowRank] = {}
        if not rank:
            return out
        seed = self.plan.spec.calibration.seed * 1000 + index
        for name, r in layers.items():
            if rank >= min(r.rows, r.columns):
                self.result.notes.append(
                    f"{name}: {r.rows}x{r.columns} is too small for lora_rank={rank}; no adapter"
                )
                continue
            out[name] = _LowRank(r.rows, r.columns, rank, seed + len(out), r.logits.device)
        return out

    def _train(self, index, block, io, samples, layers, adapters, weights, target) -> None:
        logits = [r.logits for r in layers.values()]
        lora = [p for a in adapters.values() for p in a.parameters()]
        params = logits + lora
        optimizer = _optimizer(self.plan.scorer, logits, lora)
        beta, steps = float(self.config["beta"]), int(self.config["epochs"]) * len(samples)
        bar = tqdm(total=steps, desc=f"besa block {index}", disable=not self.plan.spec.progress, leave=False)
        # transformers' CPU Mamba-1 scan has an O(L²) backward; the linear-time one computes the same
        with torch.enable_grad(), linear_mamba_scan():
            for _epoch in range(int(self.config["epochs"])):
                for x, y in samples:
                    sparsity = block_sparsity(list(layers.values()))
                    recon = reconstruction_loss(io.run(block, x, weights()), y)
                    loss = recon + sparsity_penalty(sparsity, target, beta)
                    grads = torch.autograd.grad(loss, params, allow_unused=True)
                    for p, g in zip(params, grads):
                        p.grad = g
                    optimizer.step()
                    bar.update()
                    bar.set_postfix(
                        loss=f"{float(recon.detach()):.4g}", sparsity=f"{float(sparsity.detach()):.4f}"
                    )
        bar.close()

    def _write(self, mods, layers, final, new, prefix) -> None:
        keep_mask = self.stream.keep_mask if self.backup is None else self.result.masks.__setitem__
        for name, mod in mods.items():
            if self.backup is not None:
                self.backup.keep(mod.weight)
            mod.weight.copy_(new[name[len(prefix) :] + ".weight"].to(mod.weight.dtype))
            keep_mask(name, as_weight(mod, layers[name].hard_mask(final[name]) == 0))


def reconstruction_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BESA's block loss: squared error of every hidden column divided by the column's squared norm
    over the sequence, summed and divided by the hidden size (a dead column divides by one)."""
    y = target.reshape(-1, target.shape[-1]).float()
    scale = y.norm(dim=0)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (((y - out.reshape(y.shape).float()) / scale) ** 2).sum() / y.shape[-1]


def _relative_error(block, io: BlockIO, batches, weights: dict[str, torch.Tensor]) -> float:
    """||Y - Ŷ||² / ||Y||² over the calibration batches, with the final weights."""
    num = den = 0.0
    for x, y in batches:
        out = io.run(block, x, weights).float()
        num += float(((y.float() - out) ** 2).sum())
        den += float((y.float() ** 2).sum())
    return num / den if den else 0.0


def _optimizer(scorer: Scorer, logits: list, lora: list) -> torch.optim.Optimizer:
    """AdamW (no weight decay) or Prodigy (the optional ``prodigyopt`` package): the logits at the
    scorer's ``lr``, the adapters at ``lora_lr`` (weights need far smaller steps than logits)."""
    groups = [{"params": logits, "lr": scorer.learning_rate}]
    if lora:
        groups.append({"params": lora, "lr": float(scorer.config["lora_lr"])})
    if scorer.config["optimizer"] == "prodigy":
        return importlib.import_module("prodigyopt").Prodigy(
            groups, lr=scorer.learning_rate, weight_decay=0.0
        )
    return torch.optim.AdamW(groups, lr=scorer.learning_rate, weight_decay=0.0)


class _LowRank(torch.nn.Module):
    """A LoRA update ``B @ A / rank`` of one matrix (A random, B zero: the update starts at zero)."""

    def __init__(self, rows: int, columns: int, rank: int, seed: int, device) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        bound = 1.0 / math.sqrt(columns)
        self.a = torch.nn.Parameter(((torch.rand(rank, columns, generator=gen) * 2 - 1) * bound).to(device))
        self.b = torch.nn.Parameter(torch.zeros(rows, rank, device=device))
        self.scale = 1.0 / rank

    def delta(self) -> torch.Tensor:
        return (self.b @ self.a) * self.scale
