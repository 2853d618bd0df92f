"""Block-wise calibration: feed calibration data through the model one block at a time.

The inputs of the first block are captured once (an exception stops the forward right there), then
each block runs on the current activations while hooks gather the statistics a scorer needs; a
callback prunes the block; and the block's outputs, recomputed with the pruned block ("sequential",
the default) or taken from the dense block ("dense"), become the next block's inputs. Only one
block's inputs and outputs are alive at a time, so peak memory is one block's activations plus its
statistics, however deep the model.

Each block is called with the keyword arguments the model itself passed to *that* block (masks,
rotary embeddings, cache positions), recorded from one ordinary forward, so hybrid models whose
blocks take different masks work too.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..methods.statistics import Statistic
from . import distributed
from .stats import StatsCollector


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the wanted inputs are recorded."""


@dataclass
class BlockCall:
    """How the model called one block: positional extras and keyword arguments (hidden states apart)."""

    args: tuple
    kwargs: dict
    hidden_in_kwargs: bool = False

    def __call__(
        self, block: torch.nn.Module, hidden: torch.Tensor, params: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """The block's hidden states for ``hidden``; ``params`` (names relative to the block) stand in
        for the block's own tensors during the call (``torch.func.functional_call``)."""
        args, kwargs = (
            (self.args, {**self.kwargs, "hidden_states": hidden})
            if self.hidden_in_kwargs
            else ((hidden, *self.args), self.kwargs)
        )
        if params:
            out = torch.func.functional_call(block, params, args, kwargs, strict=False)
        else:
            out = block(*args, **kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out


def _split_call(args: tuple, kwargs: dict) -> tuple[torch.Tensor, BlockCall]:
    if args:
        return args[0], BlockCall(tuple(args[1:]), dict(kwargs))
    rest = dict(kwargs)
    hidden = rest.pop("hidden_states")
    return hidden, BlockCall((), rest, hidden_in_kwargs=True)


def input_device(model: torch.nn.Module) -> torch.device:
    """Where token ids must be for ``model``: its input embedding's device, else its first parameter's
    (CPU for a module without parameters)."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(emb, "weight", None)
    if isinstance(weight, torch.Tensor):
        return weight.device
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _forward(model: torch.nn.Module, ids: torch.Tensor) -> None:
    model(input_ids=ids, use_cache=False)


def record_block_calls(model: torch.nn.Module, blocks: Sequence[torch.nn.Module], ids: torch.Tensor) -> list:
    """The :class:`BlockCall` each block receives for ``ids``, from one cheap forward.

    Every block is temporarily replaced by an identity that records its arguments, and the pass stops
    at the last block, so recording costs an embedding lookup rather than a full forward. Blocks
    return their hidden states as a tensor in transformers 5; a model whose blocks must return
    something else falls back to a real forward with recording hooks.
    """
    calls: list[BlockCall | None] = [None] * len(blocks)
    last = len(blocks) - 1

    def identity(i):
        def forward(*args, **kwargs):
            hidden, calls[i] = _split_call(args, kwargs)
            if i == last:
                raise _Stop
            return hidden

        return forward

    # a block may already carry an instance-level forward (accelerate's dispatch hooks wrap it that way):
    # put back exactly what was there, never just delete
    own = [b.__dict__.get("forward") for b in blocks]
    try:
        for i, b in enumerate(blocks):
            b.forward = identity(i)
        try:
            _forward(model, ids)
        except _Stop:
            pass
    except Exception:
        calls = [None] * len(blocks)
    finally:
        for b, previous in zip(blocks, own):
            if previous is not None:
                b.forward = previous
            elif "forward" in b.__dict__:
                del b.forward
    if any(c is None for c in calls):
        calls = _record_with_hooks(model, blocks, ids)
    return calls


def _record_with_hooks(model: torch.nn.Module, blocks: Sequence[torch.nn.Module], ids: torch.Tensor) -> list:
    calls: list[BlockCall | None] = [None] * len(blocks)
    handles = []
    for i, block in enumerate(blocks):

        def hook(_mod, args, kwargs, i=i):
            calls[i] = _split_call(args, kwargs)[1]

        handles.append(block.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        _forward(model, ids)
    finally:
        for h in handles:
            h.remove()
    if any(c is None for c in calls):
        missing = [i for i, c in enumerate(calls) if c is None]
        raise RuntimeError(f"blocks {missing} were not called during the forward pass")
    return calls


def capture_first_inputs(model: torch.nn.Module, first: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Hidden states entering ``first`` for ``ids`` (the rest of the forward is skipped)."""
    box: list[torch.Tensor] = []

    def hook(_mod, args, kwargs):
        box.append(_split_call(args, kwargs)[0].detach())
        raise _Stop

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        _forward(model, ids)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not box:
        raise RuntimeError("the first block was never called: is it part of the model's forward?")
    return box[0]


BlockCallback = Callable[..., None]


def _batch_of(batches: list[torch.Tensor], n: int) -> torch.Tensor:
    """A calibration batch of ``n`` sequences: one of that size, else the first ``n`` of a larger one."""
    exact = next((b for b in batches if len(b) == n), None)
    return exact if exact is not None else next(b for b in batches if len(b) > n)[:n]


@dataclass
class BlockIO:
    """One block's calibration activations, for callbacks that reconstruct the block's outputs.

    ``inputs`` are the batches entering the block (after the pruned blocks before it, in sequential mode),
    ``outputs`` the block's outputs on them before the callback changed anything, ``dense_outputs`` the
    dense model's outputs of this block (when tracked). :meth:`run` calls the block as the model did, for
    a batch of any size the calibration recorded (every batch size, and 1)."""

    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]
    dense_outputs: list[torch.Tensor] | None
    calls: dict[int, BlockCall]

    def run(
        self, block: torch.nn.Module, hidden: torch.Tensor, params: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        return self.calls[len(hidden)](block, hidden, params)


class BlockStream:
    """Where a block's weights live between uses: ``onload`` before the block runs, ``offload`` after it
    was pruned and its outputs computed. The default keeps everything in memory.

    A stream that takes weights away records ``zeros[weight name] = (zero entries, entries)`` of every
    weight it writes out, so the report can still count them once the weights are gone."""

    def __init__(self) -> None:
        self.zeros: dict[str, tuple[int, int]] = {}

    def onload(self, index: int, block: torch.nn.Module) -> None:
        """Make ``block``'s weights real tensors on the compute device."""

    def offload(self, index: int, block: torch.nn.Module) -> None:
        """Write ``block`` back (to disk, when offloaded) and release its memory."""

    def keep_mask(self, name: str, mask: torch.Tensor) -> None:
        """Store the pruning mask of module ``name`` (written with its block)."""


@torch.no_grad()
def run_blockwise(
    model: torch.nn.Module,
    blocks: Sequence[torch.nn.Module],
    ids: torch.Tensor,
    modules_per_block: Sequence[dict[str, torch.nn.Module]],
    needs: Collection[Statistic],
    on_block: BlockCallback,
    mode: str = "sequential",
    batch_size: int = 8,
    progress: bool = False,
    desc: str = "calibrating",
    taps: dict | None = None,
    stream: BlockStream | None = None,
    with_io: bool = False,
    dense_path: bool = False,
) -> None:
    """Run calibration ``ids`` [N, L] block by block, calling ``on_block(index, block, stats)``.

    ``stats`` maps each name of ``modules_per_block[index]`` to the block-scope statistics of ``needs``
    (a :class:`~prunekit.methods.statistics.ModuleStats`, see :mod:`prunekit.engine.stats`).
    ``mode="sequential"`` recomputes each block's outputs after ``on_block`` (which may prune it),
    ``"dense"`` passes on the outputs computed before it.
    ``stream`` brings each block's weights in before it runs and takes them out after (offloaded
    models, see :mod:`prunekit.engine.offload`); by default every block is already in memory.
    Under ``torchrun`` each rank calibrates on its shard of ``ids`` and statistics are all-reduced.
    ``with_io`` passes a :class:`BlockIO` as a fourth argument; ``dense_path`` also carries the dense
    model's activations along (one more block forward each) for its ``dense_outputs``.
    """
    if mode not in ("sequential", "dense"):
        raise ValueError(f"calibration mode must be 'sequential' or 'dense', got {mode!r}")
    was_training = model.training
    model.eval()
    stream = stream or BlockStream()
    try:
        with distributed.step():  # under torchrun: this rank's rows only; failures shared with peers
            ids = distributed.shard(ids).to(input_device(model))
            batches = list(ids.split(batch_size))
            sizes = sorted({len(b) for b in batches} | ({1} if with_io else set()))
            calls_by_size = {n: record_block_calls(model, blocks, _batch_of(batches, n)) for n in sizes}
            hidden = [capture_first_inputs(model, blocks[0], b) for b in batches]
        dense_hidden = list(hidden) if dense_path else None
        for index in tqdm(range(len(blocks)), desc=desc, disable=not progress):
            block = blocks[index]
            with distributed.step():
                stream.onload(index, block)
                collector = StatsCollector(modules_per_block[index], needs, taps)
                try:
                    outputs = [calls_by_size[len(h)][index](block, h) for h in hidden]
                finally:
                    collector.remove()
            stats = collector.stats()  # all-reduced over ranks
            del collector
            with distributed.step():
                if with_io:
                    calls = {n: by_block[index] for n, by_block in calls_by_size.items()}
                    dense_out = None
                    if dense_hidden is not None:
                        dense_out = [calls[len(h)](block, h) for h in dense_hidden]
                    on_block(index, block, stats, BlockIO(hidden, outputs, dense_out, calls))
                    dense_hidden = dense_out
                else:
                    on_block(index, block, stats)
                if mode == "sequential":
                    outputs = [calls_by_size[len(h)][index](block, h) for h in hidden]
                stream.offload(index, block)
            hidden = outputs
    finally:
        model.train(was_training)
