"""Mamba-2: SSM heads (grouped by their B/C group), state dims, gated RMSNorm over groups."""

from __future__ import annotations

import torch

from ..graph.groups import Group
from .base import Adapter, register_adapter


@register_adapter
class Mamba2Adapter(Adapter):
    name = "mamba2"
    model_types = ("mamba2",)
    supported_roles = ("residual", "ssm_heads", "ssm_state")
    default_structured_roles = ("ssm_heads",)

    def role(self, group: Group, model: torch.nn.Module) -> str:
        base = super().role(group, model)
        if base == "residual" or not group.name.endswith("mixer"):
            return base
        attrs = {m.param.split("mixer.")[-1] for m in group.members}
        if group.kind == "heads" and "A_log" in attrs:
            return "ssm_heads"
        if "A_log" not in attrs and "out_proj.weight" not in attrs and "in_proj.weight" in attrs:
            return "ssm_state"
        if group.kind == "inner":
            return "ssm_head_dim"
        return base

    def rejects(self, group: Group, model: torch.nn.Module) -> str | None:
        if group.role == "ssm_head_dim":
            return "Mamba-2 views x with one head_dim per model: head_dim is fixed"
        return super().rejects(group, model)

    def stat_taps(self, model: torch.nn.Module) -> dict:
        """conv1d runs as a fused kernel on the x/B/C segment of in_proj's output."""
        names = {id(m): n for n, m in model.named_modules()}
        taps = {}
        for layer in self.layers(model):
            mix = layer.mixer

            def xbc(out, mix=mix):
                conv = mix.conv1d.in_channels
                d_mlp = (
                    out.shape[-1]
                    - 2 * mix.intermediate_size
                    - 2 * mix.n_groups * mix.ssm_state_size
                    - mix.num_heads
                ) // 2
                start = 2 * d_mlp + mix.intermediate_size
                return out[..., start : start + conv]

            taps[f"{names[id(mix)]}.conv1d"] = (mix.in_proj, xbc)
        return taps

    def layers(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        return list(model.backbone.layers)

    def on_removed(
        self, model: torch.nn.Module, group: Group, removed_units: int, removed_outer: int
    ) -> None:
        # n_groups is read back from the shapes in sync(): when every head has its own B/C group, the
        # trace folds the groups into the heads (no outer units), so removed_outer would miss them
        if group.role == "ssm_state":
            model.get_submodule(group.name).ssm_state_size -= removed_units

    def sync(self, model: torch.nn.Module) -> None:
        super().sync(model)
        per_layer = []
        for layer in self.layers(model):
            mix = layer.mixer
            mix.hidden_size = mix.in_proj.in_features
            mix.num_heads = int(mix.A_log.shape[0])
            mix.intermediate_size = mix.out_proj.in_features
            mix.conv_dim = mix.conv1d.out_channels
            bc = mix.conv_dim - mix.intermediate_size  # B and C: 2 * n_groups * state_size channels
            n_groups = bc // (2 * mix.ssm_state_size)
            if n_groups < 1 or bc != 2 * mix.ssm_state_size * n_groups or mix.num_heads % n_groups:
                raise ValueError(
                    f"conv1d holds {bc} B/C channels: not 2 * n_groups * {mix.ssm_state_size} for an "
                    f"n_groups dividing {mix.num_heads} heads"
                )
            mix.n_groups = n_groups
            mix.norm.group_size = mix.intermediate_size // mix.n_groups
            per_layer.append(
                {
                    "num_heads": mix.num_heads,
                    "n_groups": mix.n_groups,
                    "state_size": mix.ssm_state_size,
                    "intermediate_size": mix.intermediate_size,
                }
            )
        self.set_layer_fields(model, per_layer)
