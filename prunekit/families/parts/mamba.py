"""Mamba (v1) mixer: inner channels through in_proj/conv1d/x_proj/dt_proj/A_log/D/out_proj, the dt rank,
the state size."""

from __future__ import annotations

import torch

from ...graph.groups import Group
from ..components import Component
from .base import Part, Sizes


class MambaMixer(Part):
    kind = "mamba"
    paths = ("mixer", "mamba")
    roles = ("ssm_inner", "ssm_dt_rank", "ssm_state")
    default_roles = ("ssm_inner",)
    config_fields = {"intermediate_size": "intermediate_size", "state_size": "state_size",
                     "time_step_rank": "time_step_rank"}  # fmt: skip
    bias_flags = {"use_bias": ("in_proj", "out_proj")}

    def matches(self, module: torch.nn.Module) -> bool:
        return all(hasattr(module, n) for n in ("in_proj", "x_proj", "dt_proj", "A_log", "out_proj"))

    def components(self, path: str) -> tuple[Component, ...]:
        return (
            Component("in_proj", "the input projection (x and z halves)", weights=(rf"re:{path}\.in_proj$",)),
            Component(
                "x_proj/dt_proj",
                "the selection projections; structured: the dt rank (x_proj dt rows + dt_proj columns)",
                weights=(rf"re:{path}\.(x_proj|dt_proj)$",),
                roles=("ssm_dt_rank",),
            ),
            Component("out_proj", "the output projection", weights=(rf"re:{path}\.out_proj$",)),
            Component(
                "ssm_channels",
                "structured: inner SSM channels through in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj",
                roles=("ssm_inner",),
            ),
            Component(
                "state", "structured: SSM state dims (x_proj B/C rows, A_log columns)", roles=("ssm_state",)
            ),
        )

    def role(self, group: Group, name: str, module: torch.nn.Module) -> str | None:
        attrs = {p[len(name) + 1 :] for p in group.params if p.startswith(name + ".")}
        if "out_proj.weight" in attrs:
            return "ssm_inner"
        if "dt_proj.weight" in attrs:
            return "ssm_dt_rank"
        if "A_log" in attrs:
            return "ssm_state"
        return None

    def stat_taps(self, name: str, module: torch.nn.Module) -> dict:
        """dt_proj's weight is applied as ``weight @ time_step`` and conv1d by a fused kernel."""
        mix = module
        return {
            f"{name}.dt_proj": (mix.x_proj, lambda out, mix=mix: out[..., : mix.dt_proj.in_features]),
            f"{name}.conv1d": (mix.in_proj, lambda out, mix=mix: out[..., : mix.conv1d.in_channels]),
        }

    def restate(self, module: torch.nn.Module, model: torch.nn.Module) -> Sizes:
        mix = module
        mix.hidden_size = mix.in_proj.in_features
        mix.intermediate_size = mix.out_proj.in_features
        mix.ssm_state_size = int(mix.A_log.shape[1])
        mix.time_step_rank = mix.dt_proj.in_features
        return {
            "intermediate_size": mix.intermediate_size,
            "state_size": mix.ssm_state_size,
            "time_step_rank": mix.time_step_rank,
        }
