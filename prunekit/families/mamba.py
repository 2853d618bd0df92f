"""Mamba (v1): inner channels through in_proj/conv1d/x_proj/dt_proj/A_log/D/out_proj, dt rank, state size."""

from __future__ import annotations

import torch

from ..graph.groups import Group
from .base import register_adapter, resize_depthwise_conv, resize_linear, resize_parameter
from .components import Component
from .mixers import MixerAdapter


@register_adapter
class MambaAdapter(MixerAdapter):
    name = "mamba"
    model_types = ("mamba", "falcon_mamba")
    supported_roles = ("residual", "ssm_inner", "ssm_dt_rank", "ssm_state")
    default_structured_roles = ("ssm_inner",)
    opaque_modules: dict[str, str] = {}
    layer_fields = ("intermediate_size", "state_size", "time_step_rank")
    components = (
        Component("in_proj", "the input projection (x and z halves)", weights=(r"re:mixer\.in_proj$",)),
        Component(
            "x_proj/dt_proj",
            "the selection projections; structured: the dt rank (x_proj dt rows + dt_proj columns)",
            weights=(r"re:mixer\.(x_proj|dt_proj)$",),
            roles=("ssm_dt_rank",),
        ),
        Component("out_proj", "the output projection", weights=(r"re:mixer\.out_proj$",)),
        Component(
            "ssm_channels",
            "structured: inner SSM channels through in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj",
            roles=("ssm_inner",),
        ),
        Component(
            "state", "structured: SSM state dims (x_proj B/C rows, A_log columns)", roles=("ssm_state",)
        ),
    )
    bias_flags = {"use_bias": ("mixer.in_proj", "mixer.out_proj")}

    def role(self, group: Group, model: torch.nn.Module) -> str:
        base = super().role(group, model)
        if base == "residual" or not group.name.endswith("mixer"):
            return base
        attrs = {m.param.rsplit(".", 2)[-2] + "." + m.attr for m in group.members}
        if "out_proj.weight" in attrs:
            return "ssm_inner"
        if "dt_proj.weight" in attrs:
            return "ssm_dt_rank"
        if any(a.startswith("A_log") for a in attrs) or "mixer.A_log" in attrs:
            return "ssm_state"
        return base

    def stat_taps(self, model: torch.nn.Module) -> dict:
        """dt_proj's weight is applied as ``weight @ time_step`` and conv1d by a fused kernel."""
        names = {id(m): n for n, m in model.named_modules()}
        taps = {}
        for layer in self.layers(model):
            mix = layer.mixer
            prefix = names[id(mix)]
            taps[f"{prefix}.dt_proj"] = (mix.x_proj, lambda out, mix=mix: out[..., : mix.dt_proj.in_features])
            taps[f"{prefix}.conv1d"] = (mix.in_proj, lambda out, mix=mix: out[..., : mix.conv1d.in_channels])
        return taps

    @staticmethod
    def sync_mixer(mix: torch.nn.Module) -> dict:
        """Restate one mixer's sizes from its weights; return its per-layer config fields."""
        mix.hidden_size = mix.in_proj.in_features
        mix.intermediate_size = mix.out_proj.in_features
        mix.ssm_state_size = int(mix.A_log.shape[1])
        mix.time_step_rank = mix.dt_proj.in_features
        return {
            "intermediate_size": mix.intermediate_size,
            "state_size": mix.ssm_state_size,
            "time_step_rank": mix.time_step_rank,
        }

    def apply_layer_fields(self, model: torch.nn.Module, per_layer: list[dict]) -> None:
        hidden = int(model.config.hidden_size)
        for layer, fields in zip(self.layers(model), per_layer):
            mix = layer.mixer
            inner, state, rank = fields["intermediate_size"], fields["state_size"], fields["time_step_rank"]
            resize_linear(mix.in_proj, 2 * inner, hidden)
            resize_depthwise_conv(mix.conv1d, inner)
            resize_linear(mix.x_proj, rank + 2 * state, inner)
            resize_linear(mix.dt_proj, inner, rank)
            resize_parameter(mix, "A_log", (inner, state))
            resize_parameter(mix, "D", (inner,))
            resize_linear(mix.out_proj, hidden, inner)
        self.finish_layer_fields(model, per_layer)
