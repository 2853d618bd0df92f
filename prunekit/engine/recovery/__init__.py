"""Recovery after pruning (PERP): retrain a small set of tensors, or reconstruct each block's outputs.

:func:`run_recovery` resolves the trainable sets (:mod:`.trainable`), checks them and the dense
reference before anything is attached, trains (:mod:`.retrain` or :mod:`.reconstruct`), and merges the
updates into the model only when everything succeeded; any failure or interrupt drops them and leaves
the model bit-identical to before the call.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ...families import get_adapter
from ...spec import SpecError
from ...spec.recovery import RecoverySpec
from .dense import CheckpointDense, DenseBlocks, ModelDense
from .export import check_exportable, save_peft_adapters
from .reconstruct import reconstruct
from .report import RecoveryReport
from .retrain import retrain
from .trainable import Trainables, choose

__all__ = ["CheckpointDense", "DenseBlocks", "ModelDense", "RecoveryReport", "run_recovery"]


def run_recovery(
    model: torch.nn.Module,
    spec: RecoverySpec,
    data: torch.Tensor,
    dense: DenseBlocks | None = None,
    save_adapters: str | Path | None = None,
) -> RecoveryReport:
    """Recover ``model`` in place on training windows ``data`` ``[N, L]``; see the module docstring.
    ``save_adapters`` also writes the trained plain LoRA in PEFT's format (:mod:`.export`)."""
    adapters_dir = check_exportable(spec, save_adapters) if save_adapters is not None else None
    adapter = get_adapter(model)
    blocks = adapter.layers(model)
    names = {id(m): n for n, m in model.named_modules()}
    layer_names = [names[id(b)] for b in blocks]
    choice = choose(model, spec, adapter, blocks)  # checks everything; attaches nothing
    if not choice.slots:
        raise SpecError(f"nothing to train: the sets {list(spec.train)} match nothing in this model", "train")
    report = RecoveryReport(spec.method, spec.mode, spec.options(), notes=list(choice.notes))
    report.params = _unique_params(model)
    start = time.perf_counter()
    attached: list[Trainables] = []
    try:
        if spec.mode == "retrain":
            attached.append(choice.attach(spec.seed))
            report.losses = retrain(model, spec, data, attached[0], report.notes)
            report.steps = len(report.losses)
            report.tokens = report.steps * spec.batch_size * data.shape[1]
            if adapters_dir is not None:
                save_peft_adapters(attached[0], spec, adapters_dir)
        else:
            if dense is None:
                raise SpecError(
                    "mode='reconstruct' fits each block to the dense block's outputs: pass dense= "
                    "(the model before pruning, or its checkpoint directory)",
                    "dense",
                )
            if adapters_dir is not None:
                raise SpecError(
                    "save_adapters exports a retrained plain LoRA (mode='retrain')", "save_adapters"
                )
            dense.check(model, blocks)
            report.blocks = reconstruct(
                model, spec, adapter, blocks, layer_names, data, dense, attached, report.notes
            )
            report.losses = [b["loss"] for b in report.blocks.values()]
            per_block = (
                spec.steps if spec.steps is not None else spec.epochs * -(-len(data) // spec.batch_size)
            )
            report.steps = per_block * len(blocks)
            report.tokens = int(data.numel())
        for trainables in attached:
            report.trainable += trainables.count()
            for kind, n in trainables.count_by_kind().items():
                report.trainable_by_kind[kind] = report.trainable_by_kind.get(kind, 0) + n
    except BaseException:
        for trainables in reversed(attached):
            trainables.discard()
        raise
    for trainables in attached:
        trainables.merge()
    report.seconds = time.perf_counter() - start
    report.notes = list(dict.fromkeys(report.notes))
    return report


def _unique_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
