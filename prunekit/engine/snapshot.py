"""The values of some parameters and consumer biases, kept aside so that a model can be put back
exactly: after a failure in the middle of sequential structured pruning, or to switch task masks."""

from __future__ import annotations

from collections.abc import Iterable

import torch


class Snapshot:
    """``Snapshot(model, params, bias_modules).restore()`` undoes every in-place write to them, and
    removes biases created since (bias compensation creates them where a layer had none)."""

    def __init__(self, model: torch.nn.Module, params: Iterable[str], bias_modules: Iterable[str]) -> None:
        self.model = model
        self.params = {n: model.get_parameter(n).detach().clone() for n in dict.fromkeys(params)}
        self.biases = {}
        for name in dict.fromkeys(bias_modules):
            bias = getattr(model.get_submodule(name), "bias", None)
            self.biases[name] = None if bias is None else bias.detach().clone()
        self.added_biases = list(getattr(model.config, "prunekit_added_biases", None) or [])

    @torch.no_grad()
    def restore(self) -> None:
        for name, value in self.params.items():
            self.model.get_parameter(name).copy_(value)
        for name, bias in self.biases.items():
            module = self.model.get_submodule(name)
            if bias is None:
                module.bias = None
            else:
                module.bias.copy_(bias)
        if hasattr(self.model, "config"):
            self.model.config.prunekit_added_biases = list(self.added_biases)
