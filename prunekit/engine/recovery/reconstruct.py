"""Block-wise reconstruction: each pruned block's recovery tensors are fitted so that the block
reproduces the dense block's outputs on the calibration inputs (mean squared error), one block at a time
on the calibration engine.

The inputs of block ``i`` are the calibration activations after the blocks before it were already
reconstructed (sequential calibration), and the target is the dense block ``i`` applied to those same
inputs (:mod:`.dense`): the block learns to undo its own pruning error, not the ones before it. Block
``i``'s tensors are attached when it is reached and stay attached (not merged) until the caller merges
them all at the end, so a failure or an interrupt at any block can drop every update and leave the model
exactly as it was; memory is the updates themselves plus one block's optimizer state.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ...families import Adapter
from ...families.mamba_scan import linear_mamba_scan
from ...spec.recovery import RecoverySpec
from ..calibration import BlockIO, run_blockwise
from .dense import DenseBlocks
from .optim import optimizer, step
from .trainable import Trainables, choose


def reconstruct(
    model: torch.nn.Module,
    spec: RecoverySpec,
    adapter: Adapter,
    blocks: list[torch.nn.Module],
    layer_names: list[str],
    calibration: torch.Tensor,
    dense: DenseBlocks,
    attached: list[Trainables],
    notes: list[str],
) -> dict[str, dict[str, float]]:
    """Reconstruct every block; returns ``{block name: {"before", "after", "loss"}}`` (relative squared
    errors against the dense block on the calibration data, and the last training loss).

    Each block's :class:`~.trainable.Trainables` is appended to ``attached`` as soon as it exists; the
    caller merges them after success or discards them after a failure. A block whose error training
    did not lower keeps its pruned weights (its updates are dropped, ``notes`` says so).
    """
    errors: dict[str, dict[str, float]] = {}

    def on_block(index: int, block: torch.nn.Module, _stats, io: BlockIO) -> None:
        target_block = dense.block(index)
        try:
            targets = [_dense_outputs(io, target_block, x) for x in io.inputs]
        finally:
            dense.release(index)
        batches = list(zip(io.inputs, targets))
        before = _error(zip(targets, io.outputs))  # io.outputs: the pruned block's, before training
        choice = choose(model, spec, adapter, blocks, within=layer_names[index])
        if not choice.slots:
            errors[layer_names[index]] = {"before": before, "after": before, "loss": float("nan")}
            return
        trainables = choice.attach(spec.seed * 1000 + index)
        attached.append(trainables)
        loss = _fit(spec, io, block, batches, trainables.parameters(), index)
        after = relative_error(io, block, batches)
        if not after < before:  # never leave a block worse than pruning did
            attached.pop().discard()
            notes.append(f"{layer_names[index]}: training did not lower its error; kept as pruned")
            after = before
        errors[layer_names[index]] = {"before": before, "after": after, "loss": loss}

    run_blockwise(
        model, blocks, calibration, [{} for _ in blocks], (), on_block=on_block, mode="sequential",
        batch_size=spec.batch_size, progress=spec.progress, desc="recover blocks", with_io=True,
    )  # fmt: skip
    return errors


def _dense_outputs(io: BlockIO, block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    dtype = next(block.parameters()).dtype
    return io.run(block, x.to(dtype)).to(x.dtype)


def _fit(spec: RecoverySpec, io: BlockIO, block, batches, params, index: int) -> float:
    steps = spec.steps if spec.steps is not None else spec.epochs * len(batches)
    opt, scheduler = optimizer(params, spec, steps)
    gen = torch.Generator().manual_seed(spec.seed * 1000 + index)
    order = torch.cat([torch.randperm(len(batches), generator=gen) for _ in range(-(-steps // len(batches)))])
    bar = tqdm(total=steps, desc=f"recover block {index}", disable=not spec.progress, leave=False)
    loss_value = float("nan")
    was_training = block.training
    block.train()
    try:
        with torch.enable_grad(), linear_mamba_scan():
            for i in range(steps):
                x, y = batches[int(order[i])]
                loss = torch.nn.functional.mse_loss(io.run(block, x).float(), y.float())
                step(opt, scheduler, loss, params)
                loss_value = float(loss.detach())
                bar.update()
                bar.set_postfix(loss=f"{loss_value:.4g}")
    finally:
        block.train(was_training)
        bar.close()
    return loss_value


@torch.no_grad()
def relative_error(io: BlockIO, block: torch.nn.Module, batches) -> float:
    """||Y - Ŷ||² / ||Y||² of ``block`` against the dense outputs over the calibration batches."""
    return _error((y, io.run(block, x)) for x, y in batches)


def _error(pairs) -> float:
    num = den = 0.0
    for y, out in pairs:
        num += float(((y.float() - out.float()) ** 2).sum())
        den += float((y.float() ** 2).sum())
    return num / den if den else 0.0
