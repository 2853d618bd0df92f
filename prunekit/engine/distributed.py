"""Data-parallel calibration over ``torch.distributed`` (gloo on CPU, NCCL on GPU).

Under ``torchrun`` every rank runs the same :func:`prunekit.prune` call on the same model and the same
calibration set; the engine keeps only this rank's shard of the calibration rows (:func:`shard`) and
all-reduces every statistic before any score is computed (:func:`all_reduce_`): sums of squares, X^T X,
sums for means and fluctuations, token counts, gradient accumulators. Scores, masks and weight updates
are then computed from identical numbers on every rank, so every rank holds the same pruned model and
rank 0 alone saves it.

Failures: a rank that raises must not leave the others blocked in a collective, nor let rank 0 save a
model the failed rank never finished. The engine therefore passes every step through :func:`agree`,
a small all-reduce of "did this step fail here?" flags: the failing rank re-raises its own error, every
other rank raises :class:`PeerFailedError` naming the failed ranks, and ``prune`` restores the model on
every rank before the error propagates.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

__all__ = ["PeerFailedError", "active", "rank", "world_size", "shard", "all_reduce_", "agree", "step", "init"]


class PeerFailedError(RuntimeError):
    """Another rank failed; this one stops too (and saves nothing)."""


def active() -> bool:
    """True inside an initialised process group with more than one rank."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return torch.distributed.get_rank() if active() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if active() else 1


def init(device: str | torch.device | None = None) -> bool:
    """Join the process group ``torchrun`` describes in the environment; False when not launched so.

    Backend: NCCL when ``device`` is CUDA, gloo otherwise. Calling it twice is harmless.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    dist = torch.distributed
    if not dist.is_initialized():
        cuda = device is not None and torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return True


def shard(ids: torch.Tensor) -> torch.Tensor:
    """This rank's rows of the calibration set: contiguous, sizes differing by at most one.

    Raises:
        ValueError: fewer calibration rows than ranks (a rank with nothing to measure).
    """
    if not active():
        return ids
    n = world_size()
    if ids.shape[0] < n:
        raise ValueError(
            f"distributed calibration needs at least one row per rank: {ids.shape[0]} rows, {n} ranks"
        )
    return ids.tensor_split(n)[rank()]


def _device_for_collectives() -> torch.device:
    backend = torch.distributed.get_backend()
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


def all_reduce_(tensors: list[torch.Tensor]) -> None:
    """Sum each tensor over ranks, in place (a no-op outside a process group)."""
    if not active():
        return
    where = _device_for_collectives()
    for t in tensors:
        if t.device == where:
            torch.distributed.all_reduce(t)
        else:
            moved = t.to(where)
            torch.distributed.all_reduce(moved)
            t.copy_(moved.to(t.device))


def agree(error: BaseException | None) -> None:
    """A barrier that also shares failure: raise here if this or any other rank failed."""
    if not active():
        if error is not None:
            raise error
        return
    flags = torch.zeros(world_size(), dtype=torch.int32)
    flags[rank()] = 0 if error is None else 1
    all_reduce_([flags])
    if error is not None:
        error._prunekit_agreed = True  # type: ignore[attr-defined]
        raise error
    failed = [r for r, f in enumerate(flags.tolist()) if f]
    if failed:
        peer = PeerFailedError(
            f"rank {rank()}: stopping because rank(s) {failed} failed during pruning (their error is in "
            "their own output); every rank restores its model and nothing is saved"
        )
        peer._prunekit_agreed = True  # type: ignore[attr-defined]
        raise peer


@contextlib.contextmanager
def step() -> Iterator[None]:
    """Run a block of work that may fail on some ranks; every rank leaves it together (see :func:`agree`)."""
    try:
        yield
    except BaseException as err:  # noqa: BLE001 - shared with the peers, then re-raised by agree
        if getattr(err, "_prunekit_agreed", False):  # every rank already knows (a nested step)
            raise
        agree(err)
        raise
    agree(None)
