"""Unstructured and N:M pruning of weight matrices, with or without calibration statistics.

Weights-only scorers (magnitude) score every targeted matrix directly. Scorers that read activation
statistics run through the block-wise calibration engine: each block is scored on its inputs and
pruned before the next block's inputs are computed. Full-model statistics (gradients) are computed up
front. Which is which the scorer's declared statistics say (their scope); this module knows none of
them by name. Allocation decides each block's sparsity (uniform, or OWL from a dense pass that scores
every block with the registered scorer OWL names).

Mixture-of-experts matrices are pruned per expert through the per-expert Linears of
:mod:`.experts`, attached for the whole run so that every statistic (block-wise or full-model) is the
expert's own. An expert that no calibration token reaches has no activation statistics: it is pruned by
magnitude, and the report's notes say so.

Every weight that changes is backed up first, so an error half-way (NaN activations, a failing
Cholesky) restores the model exactly before it propagates.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..families.parts.base import is_conv1d
from ..methods.allocation import OWL
from ..methods.scorers import Scorer, get_scorer
from ..methods.select import Selection
from ..methods.statistics import ModuleStats, Scope, of_scope
from ..spec import OWLAllocation, SemiStructured
from .calibration import BlockStream, run_blockwise
from .experts import split_experts
from .gradients import model_statistics
from .plan import Plan


@dataclass
class UnstructuredResult:
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    #: module name -> relative layer reconstruction error ||WX - ŴX||² / ||WX||² (when a Hessian exists)
    errors: dict[str, float] = field(default_factory=dict)
    #: block index -> sparsity used (OWL makes them differ)
    block_sparsity: dict[int, float] = field(default_factory=dict)
    #: what the user should know: experts that no calibration token reached
    notes: list[str] = field(default_factory=list)


def as_matrix(module: torch.nn.Module) -> torch.Tensor:
    """The weight as 2-D [outputs, inputs-per-output] (a depthwise Conv1d's taps are its columns,
    transformers' ``Conv1D`` stores its weight ``[in, out]``: transposed back)."""
    w = module.weight
    return w.t() if is_conv1d(module) else w.reshape(w.shape[0], -1)


def as_weight(module: torch.nn.Module, matrix: torch.Tensor) -> torch.Tensor:
    """A matrix in :func:`as_matrix`'s layout, in the weight's own."""
    return matrix.t() if is_conv1d(module) else matrix.reshape(module.weight.shape)


def matrix_stats(module: torch.nn.Module, stats: ModuleStats | None) -> ModuleStats:
    """``stats`` shaped to broadcast over :func:`as_matrix`'s view (a depthwise Conv1d's features are
    its rows)."""
    return (stats or ModuleStats()).for_matrix(features_on_rows=isinstance(module, torch.nn.Conv1d))


class WeightBackup:
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


def prune_unstructured(plan: Plan) -> UnstructuredResult:
    """Prune every weight ``plan.targeted`` names; see the module docstring.

    With ``plan.stream`` (an offloaded model, :mod:`prunekit.engine.offload`) each block's weights are
    brought in before and written out after it is pruned, masks go to ``stream.keep_mask`` instead of the
    result, and no in-memory backup is kept: the checkpoint on disk is the backup.
    """
    needs = of_scope(plan.scorer.requires, Scope.BLOCK)
    per_block = by_block(plan.model, plan.blocks, plan.targeted)
    if (needs or plan.spec.allocation.name == "owl") and per_block["outside"]:
        outside = ", ".join(sorted(per_block["outside"]))
        raise ValueError(
            f"method {plan.scorer.name!r} needs activation statistics, but {outside} lies outside the blocks"
        )
    result = UnstructuredResult()
    backup = WeightBackup()
    try:
        with split_experts(plan.experts):
            _prune_blocks(plan, per_block, needs, result, backup)
    except BaseException:
        backup.restore()
        raise
    return result


def _prune_blocks(
    plan: Plan, per_block: dict, needs, result: UnstructuredResult, backup: WeightBackup
) -> None:
    """Full-model statistics first, then the allocation, then every block in order (and what lies
    outside the blocks, which needs no activations)."""
    spec, model, blocks, calibration, progress = (
        plan.spec,
        plan.model,
        plan.blocks,
        plan.calibration,
        plan.spec.progress,
    )
    pattern = spec.structure.pattern if isinstance(spec.structure, SemiStructured) else None
    per_row = getattr(spec.structure, "granularity", None) == "row"
    stream = plan.stream or BlockStream()  # blocks already in memory: onload/offload do nothing
    weights = {name: mod.weight for name, mod in plan.targeted.items()}
    per_param = model_statistics(model, calibration, weights, plan.scorer.requires, progress)
    result.block_sparsity = block_allocation(plan, per_block["inside"])
    keep = backup if plan.stream is None else None
    experts = plan.expert_targets
    pruner = _MatrixPruner(plan.scorer, per_param, result, keep, stream, experts if needs else ())

    def prune_block(index: int, stats: dict[str, ModuleStats]) -> None:
        selection = Selection(result.block_sparsity.get(index, spec.sparsity), pattern, per_row)
        pruner.prune(per_block["inside"][index], per_sequence(stats, experts, calibration), selection)

    if needs:
        run_blockwise(
            model, blocks, calibration, per_block["inside"], needs,
            on_block=lambda i, _b, stats: prune_block(i, stats), mode=spec.calibration.mode,
            batch_size=spec.calibration.batch_size, progress=progress, desc=f"{plan.scorer.name} blocks",
            taps=plan.taps, stream=stream,
        )  # fmt: skip
    else:
        for i in tqdm(range(len(blocks)), desc="scoring", disable=not progress):
            stream.onload(i, blocks[i])
            prune_block(i, {})
            stream.offload(i, blocks[i])
    if per_block["outside"]:
        pruner.prune(per_block["outside"], {}, Selection(spec.sparsity, pattern, per_row))


def block_allocation(plan: Plan, inside: list[dict[str, torch.nn.Module]]) -> dict[int, float]:
    """Each block's sparsity: the request everywhere, or OWL's outlier-weighted allocation."""
    spec, alloc = plan.spec, plan.spec.allocation
    if not isinstance(alloc, OWLAllocation):
        return {i: spec.sparsity for i in range(len(plan.blocks))}
    return owl_allocation(
        plan.model, plan.blocks, inside, plan.calibration, spec.sparsity, OWL(alloc.lam, alloc.m),
        spec.calibration.batch_size, spec.progress, plan.taps, plan.expert_targets,
    )  # fmt: skip


def per_sequence(
    stats: dict[str, ModuleStats], experts: Collection[str], calibration: torch.Tensor | None
) -> dict[str, ModuleStats]:
    """``stats`` with each expert's sequence count restated as the calibration's.

    An expert's inputs arrive flattened (``[routed tokens, features]``), so the collector counts every
    token as a sequence; per-sequence averages (Wanda's and GBLM's ||X||) must divide by the calibration
    sequences, as every other layer's do: tokens routed elsewhere add zero input to this expert."""
    if not experts or not isinstance(calibration, torch.Tensor):
        return stats
    n = int(calibration.shape[0])
    return {
        name: ModuleStats(st.values, st.n_tokens, n) if name in experts else st for name, st in stats.items()
    }


class _MatrixPruner:
    """Prunes modules with their statistics (and the full-model statistics of their weights), records
    masks and layer errors, and backs up every weight it changes (when ``backup`` is given: in memory).

    ``unseen_by_magnitude`` names the modules (experts) that may see no calibration token: those that
    saw none are pruned by magnitude, with a note, instead of failing for want of statistics."""

    def __init__(
        self, scorer: Scorer, per_param: dict, result: UnstructuredResult, backup, stream,
        unseen_by_magnitude: Collection[str] = (),
    ) -> None:  # fmt: skip
        self.scorer, self.per_param, self.result = scorer, per_param, result
        self.backup, self.stream = backup, stream
        self.unseen = unseen_by_magnitude

    def _scorer(self, name: str, st: ModuleStats) -> Scorer:
        if name not in self.unseen or st.n_tokens:
            return self.scorer
        self.result.notes.append(
            f"{name}: no calibration token was routed to this expert; pruned by magnitude, not "
            f"{self.scorer.name}"
        )
        return get_scorer("magnitude")

    def prune(self, mods: dict[str, torch.nn.Module], stats: dict[str, ModuleStats], selection) -> None:
        keep_mask = self.stream.keep_mask if self.backup is None else self.result.masks.__setitem__
        for name, mod in mods.items():
            st = matrix_stats(mod, stats.get(name))
            if name in self.per_param:
                st = st.with_params("weight", self.per_param[name])
            matrix = as_matrix(mod).detach()
            scorer = self._scorer(name, st)
            new, mask = scorer.prune_matrix(matrix, st, selection)
            error = scorer.layer_error(matrix, new, st)
            if error is not None:
                self.result.errors[name] = error
            if self.backup is not None:
                self.backup.keep(mod.weight)
            with torch.no_grad():
                mod.weight.copy_(as_weight(mod, new).to(mod.weight.dtype))
            keep_mask(name, as_weight(mod, mask))


def by_block(model, blocks, targeted) -> dict:
    names = {id(m): n for n, m in model.named_modules()}
    prefixes = [names[id(b)] + "." for b in blocks]
    inside: list[dict[str, torch.nn.Module]] = [{} for _ in blocks]
    outside: dict[str, torch.nn.Module] = {}
    for name, mod in targeted.items():
        index = next((i for i, p in enumerate(prefixes) if name.startswith(p)), None)
        (outside if index is None else inside[index])[name] = mod
    return {"inside": inside, "outside": outside}


def owl_allocation(
    model: torch.nn.Module,
    blocks: list[torch.nn.Module],
    inside: list[dict[str, torch.nn.Module]],
    calibration: torch.Tensor,
    sparsity: float,
    owl: OWL,
    batch_size: int = 8,
    progress: bool = False,
    taps: dict | None = None,
    experts: Collection[str] = (),
) -> dict[int, float]:
    """Block index -> sparsity from OWL's dense pass: each block's targeted weights (``inside[i]``) are
    scored by the registered scorer ``owl.scorer`` on the statistics it and OWL declare, and OWL turns
    the blocks' outlier ratios and sizes into sparsities whose weighted mean is ``sparsity``.

    ``experts`` names per-expert matrices: their statistics count sequences as every layer's do
    (:func:`per_sequence`), and an expert no token reached has no outliers to count (its size counts)."""
    scorer = get_scorer(owl.scorer, **owl.scorer_options)
    needs = owl.requires | scorer.requires
    if of_scope(needs, Scope.MODEL):
        raise ValueError(f"OWL scores blocks with {owl.scorer!r}, which needs full-model statistics")
    ratios: dict[int, float] = {}

    def measure(index: int, _block, stats: dict[str, ModuleStats]) -> None:
        stats = per_sequence(stats, experts, calibration)
        scores = [
            scorer.weight_scores(as_matrix(mod).detach(), matrix_stats(mod, stats[name]))
            for name, mod in inside[index].items()
            if name not in experts or stats[name].n_tokens
        ]
        ratios[index] = owl.outliers(scores)

    run_blockwise(
        model, blocks, calibration, inside, needs, measure, mode="dense", batch_size=batch_size,
        progress=progress, desc="OWL outliers", taps=taps,
    )  # fmt: skip
    sizes = {i: sum(mod.weight.numel() for mod in inside[i].values()) for i in range(len(blocks))}
    return owl.sparsities(ratios, sizes, sparsity)
