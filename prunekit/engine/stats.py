"""Per-layer input statistics gathered by forward hooks while calibration data flows through a block.

Scorers declare what they read (``Scorer.requires``); the collector gathers exactly the block-scope
statistics among those (:class:`~prunekit.methods.statistics.BlockStatistic`), one accumulator per
(module, statistic), and knows none of them by name: each statistic owns its running sums and
finalisation (fp32 or fp64 whatever the model's dtype, see :mod:`prunekit.methods.statistics`). This
module only turns what a hook sees into ``[tokens, features]`` inputs, counts tokens and sequences,
refuses non-finite activations, and sums every running sum over ranks under ``torchrun``.

Features are the weight's input features: the last dim of a Linear's input, the channel dim of a
depthwise Conv1d's input.
"""

from __future__ import annotations

from collections.abc import Collection

import torch

from ..methods.statistics import Accumulator, ModuleStats, Scope, Statistic, ordered
from . import distributed


class NonFiniteActivationError(ValueError):
    """Calibration activations contain NaN or inf: statistics (and every score) would be meaningless."""


class LayerStats:
    """One module's accumulators (one per declared statistic) and the counts they share."""

    def __init__(self, statistics: Collection[Statistic]) -> None:
        self.accumulators = [Accumulator(s) for s in ordered(statistics)]
        self.n_tokens = 0
        self.n_samples = 0

    def add(self, x: torch.Tensor, name: str, samples: int) -> None:
        """``x``: [tokens, features]."""
        if not torch.isfinite(x).all():
            raise NonFiniteActivationError(
                f"non-finite activations (NaN/inf) enter {name} during calibration"
            )
        x = x.float()
        for acc in self.accumulators:
            acc.add(x)
        self.n_tokens += x.shape[0]
        self.n_samples += samples

    def all_reduce(self) -> None:
        """Sum the counts and every statistic's running sums over ranks, in place."""
        counts = torch.tensor([self.n_tokens, self.n_samples], dtype=torch.float64)
        distributed.all_reduce_([counts, *(t for acc in self.accumulators for t in acc.tensors())])
        self.n_tokens, self.n_samples = (int(c) for c in counts.tolist())

    def result(self) -> ModuleStats:
        """The finalised statistics (those that saw any input) with the counts."""
        values = {}
        for acc in self.accumulators:
            value = acc.result(self.n_tokens)
            if value is not None:
                values[type(acc.statistic)] = value
        return ModuleStats(values, self.n_tokens, self.n_samples)


def _features(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(module, torch.nn.Conv1d):  # [B, C, L] -> [B*L, C]
        return x.transpose(1, 2).reshape(-1, x.shape[1])
    return x.reshape(-1, x.shape[-1])


class StatsCollector:
    """Forward pre-hooks on the named modules; ``stats()`` returns each module's :class:`ModuleStats`.

    ``needs`` holds statistic declarations; only the block-scope ones are gathered here (full-model
    statistics come from :mod:`prunekit.engine.gradients`). A module whose weight the model's code uses
    directly (``self.dt_proj.weight @ x``, a fused conv kernel) never sees its input through a hook;
    ``taps`` maps such a module's name to ``(source_module, fn)``: the input is ``fn(source's output)``,
    features last. Adapters declare them.
    """

    def __init__(
        self,
        modules: dict[str, torch.nn.Module],
        needs: Collection[Statistic],
        taps: dict | None = None,
    ) -> None:
        statistics = [s for s in needs if s.scope is Scope.BLOCK]
        self.layers = {name: LayerStats(statistics) for name in modules}
        self.handles = []
        taps = taps or {}
        for name, mod in modules.items():
            if name in taps:
                source, fn = taps[name]
                self.handles.append(source.register_forward_hook(self._tap(name, fn)))
            else:
                self.handles.append(mod.register_forward_pre_hook(self._hook(name)))

    def _tap(self, name: str, fn):
        def hook(_module, _args, output):
            x = fn(output.detach())
            self.layers[name].add(x.reshape(-1, x.shape[-1]), name, samples=x.shape[0])

        return hook

    def _hook(self, name: str):
        def hook(module, args):
            x = args[0]
            self.layers[name].add(_features(module, x.detach()), name, samples=x.shape[0])

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def stats(self) -> dict[str, ModuleStats]:
        """Each module's statistics; under ``torchrun`` summed over every rank's calibration shard first."""
        if distributed.active():
            for name in sorted(self.layers):
                self.layers[name].all_reduce()
        return {name: s.result() for name, s in self.layers.items()}

    def __enter__(self) -> StatsCollector:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
