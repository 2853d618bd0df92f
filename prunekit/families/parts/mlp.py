"""Feed-forward networks: intermediate channels are the units.

Gated (``gate_proj``/``up_proj`` → ``down_proj``), plain (``fc1`` → ``fc2``, GPT-2's ``c_fc`` → ``c_proj``),
fused (Phi-3's ``gate_up_proj``): the names are data; the trace ties a fused projection's halves.
Some families keep the MLP's projections directly on the block (OPT's ``fc1``/``fc2``): their path is "".
"""

from __future__ import annotations

import torch

from ...graph.groups import Group
from ..components import Component
from .base import Part, Sizes, in_features, out_features, set_if_present


class MLP(Part):
    kind = "mlp"
    paths = ("mlp",)
    roles = ("mlp",)
    default_roles = ("mlp",)
    #: the projections into the intermediate width, and the one out of it
    up: tuple[str, ...] = ("gate_proj", "up_proj")
    down = "down_proj"
    #: output channels of each ``up`` projection per intermediate channel (2: gate and up fused in one)
    up_factor = 1
    config_fields = {"intermediate_size": "intermediate_size"}
    width_attrs: tuple[str, ...] = ("intermediate_size",)

    def matches(self, module: torch.nn.Module) -> bool:
        names = (*self.up, self.down)
        return all(isinstance(getattr(getattr(module, n, None), "weight", None), torch.Tensor) for n in names)

    def components(self, path: str) -> tuple[Component, ...]:
        names = "|".join((*self.up, self.down))
        where = rf"{path}\." if path else ""
        return (
            Component(
                "mlp",
                "feed-forward projections; structured: intermediate channels",
                weights=(rf"re:\.{where}({names})$",),
                roles=("mlp",),
            ),
        )

    def role(self, group: Group, name: str, module: torch.nn.Module) -> str | None:
        if group.kind != "channels" or f"{name}.{self.down}.weight" not in group.params:
            return None
        return "mlp"

    def restate(self, module: torch.nn.Module, model: torch.nn.Module) -> Sizes:
        width = in_features(getattr(module, self.down))
        for name in self.up:
            got = out_features(getattr(module, name))
            if got != width * self.up_factor:
                raise ValueError(f"{name} has {got} output channels for {self.down}'s {width} inputs")
        set_if_present(module, self.width_attrs, width)
        return {"intermediate_size": width}
