"""Per-layer input statistics gathered by forward hooks while calibration data flows through a block.

Scorers name what they need (``Scorer.needs``); only that is accumulated, always in fp32 or fp64, whatever
the model's dtype. Per-feature sums run in fp64 and are rounded to fp32 at the end, so that splitting the
calibration set over processes (which changes the summation order) gives the same fp32 statistics and
masks (barring an fp64 sum within 1e-16 of an fp32 rounding boundary); X^T X stays fp32 (its size
makes fp64 costly), which is why SparseGPT matches only to tolerance:

- ``sq_norm``: sum over tokens of x_j^2 per input feature (Wanda's ||X_j||^2), with ``n_samples``.
- ``hessian``: X^T X over tokens, scaled as 2/n like SparseGPT's H (used for OBS updates).
- ``mean`` / ``var``: per input feature mean and (population) variance over tokens (FLAP's fluctuation).

Features are the weight's input features: the last dim of a Linear's input, the channel dim of a
depthwise Conv1d's input.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import distributed

KNOWN_STATS = frozenset({"sq_norm", "hessian", "mean", "var", "grad"})


class NonFiniteActivationError(ValueError):
    """Calibration activations contain NaN or inf: statistics (and every score) would be meaningless."""


@dataclass
class LayerStats:
    needs: frozenset[str]
    n_tokens: int = 0
    n_samples: int = 0
    sums: dict[str, torch.Tensor] = field(default_factory=dict)

    def add(self, x: torch.Tensor, name: str, samples: int) -> None:
        """``x``: [tokens, features]."""
        if not torch.isfinite(x).all():
            raise NonFiniteActivationError(
                f"non-finite activations (NaN/inf) enter {name} during calibration"
            )
        x = x.float()
        tokens = x.shape[0]
        moments = "mean" in self.needs or "var" in self.needs
        if moments or "sq_norm" in self.needs:  # fp64: the same fp32 result in any summation order
            xd = x.double()
            self._acc("sumsq", (xd * xd).sum(0))  # Wanda's ||X_j||^2 and FLAP's second moment alike
            if moments:
                self._acc("sum", xd.sum(0))
        if "hessian" in self.needs:
            self._acc("xtx", x.t() @ x)
        self.n_tokens += tokens
        self.n_samples += samples

    def _acc(self, key: str, value: torch.Tensor) -> None:
        if key in self.sums:
            self.sums[key] += value
        else:
            self.sums[key] = value.clone()

    def result(self) -> dict[str, torch.Tensor | int]:
        out: dict[str, torch.Tensor | int] = {"n_tokens": self.n_tokens, "n_samples": self.n_samples}
        n = max(1, self.n_tokens)
        if "sq_norm" in self.needs and "sumsq" in self.sums:
            out["sq_norm"] = self.sums["sumsq"].float()
        if "sum" in self.sums:
            mean = self.sums["sum"] / n
            out["mean"] = mean.float()
            out["var"] = (self.sums["sumsq"] / n - mean * mean).clamp_min(0).float()
        if "xtx" in self.sums:
            out["hessian"] = self.sums["xtx"] * (2.0 / n)
        return out


def _features(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(module, torch.nn.Conv1d):  # [B, C, L] -> [B*L, C]
        return x.transpose(1, 2).reshape(-1, x.shape[1])
    return x.reshape(-1, x.shape[-1])


class StatsCollector:
    """Forward pre-hooks on the named modules; ``stats()`` returns each module's statistics.

    A module whose weight the model's code uses directly (``self.dt_proj.weight @ x``, a fused conv
    kernel) never sees its input through a hook; ``taps`` maps such a module's name to
    ``(source_module, fn)``: the input is ``fn(source's output)``, features last. Adapters declare them.
    """

    def __init__(
        self, modules: dict[str, torch.nn.Module], needs: frozenset[str], taps: dict | None = None
    ) -> None:
        self.layers = {name: LayerStats(needs) for name in modules}
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

    def stats(self) -> dict[str, dict]:
        """Each module's statistics; under ``torchrun`` summed over every rank's calibration shard first."""
        if distributed.active():
            self._all_reduce()
        return {name: s.result() for name, s in self.layers.items()}

    def _all_reduce(self) -> None:
        for name in sorted(self.layers):
            layer = self.layers[name]
            counts = torch.tensor([layer.n_tokens, layer.n_samples], dtype=torch.float64)
            keys = sorted(layer.sums)
            distributed.all_reduce_([counts, *(layer.sums[k] for k in keys)])
            layer.n_tokens, layer.n_samples = (int(c) for c in counts.tolist())

    def __enter__(self) -> StatsCollector:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
