"""Mamba-2 mixer: SSM heads (grouped by their B/C group), state dims, gated RMSNorm over groups."""

from __future__ import annotations

import torch

from ...graph.groups import Group
from ..components import Component
from .base import Part, Sizes


class Mamba2Mixer(Part):
    kind = "mamba2"
    paths = ("mixer", "mamba")
    roles = ("ssm_heads", "ssm_state", "ssm_head_dim")
    default_roles = ("ssm_heads",)
    config_fields = {"num_heads": "num_heads", "n_groups": "n_groups", "state_size": "state_size",
                     "intermediate_size": "intermediate_size"}  # fmt: skip
    bias_flags = {"use_bias": ("in_proj", "out_proj")}

    def matches(self, module: torch.nn.Module) -> bool:
        needed = ("in_proj", "conv1d", "A_log", "D", "dt_bias", "out_proj", "norm")
        return all(hasattr(module, n) for n in needed)

    def components(self, path: str) -> tuple[Component, ...]:
        return (
            Component(
                "in_proj",
                "the input projection (z, x, B, C, dt segments)",
                weights=(rf"re:{path}\.in_proj$",),
            ),
            Component("out_proj", "the output projection", weights=(rf"re:{path}\.out_proj$",)),
            Component(
                "ssm_heads",
                "structured: whole SSM heads "
                "(in_proj z/x/dt rows, conv1d, A_log, D, dt_bias, norm, out_proj)",
                roles=("ssm_heads",),
            ),
            Component("state", "structured: SSM state dims (in_proj B/C rows, conv1d)", roles=("ssm_state",)),
        )

    def role(self, group: Group, name: str, module: torch.nn.Module) -> str | None:
        attrs = {p[len(name) + 1 :] for p in group.params if p.startswith(name + ".")}
        if not attrs:
            return None
        if group.kind == "heads" and "A_log" in attrs:
            return "ssm_heads"
        if "A_log" not in attrs and "out_proj.weight" not in attrs and "in_proj.weight" in attrs:
            return "ssm_state"
        if group.kind == "inner":
            return "ssm_head_dim"
        return None

    def rejects(self, group: Group, module: torch.nn.Module, model: torch.nn.Module) -> str | None:
        if group.role == "ssm_head_dim":
            return "Mamba-2 views x with one head_dim per model: head_dim is fixed"
        return None

    def stat_taps(self, name: str, module: torch.nn.Module) -> dict:
        """conv1d runs as a fused kernel on the x/B/C segment of in_proj's output."""
        mix = module

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

        return {f"{name}.conv1d": (mix.in_proj, xbc)}

    def on_removed(self, module: torch.nn.Module, group: Group, units: torch.Tensor) -> None:
        # n_groups is read back from the shapes in restate(): when every head has its own B/C group, the
        # trace folds the groups into the heads (no outer units), so counting outer units would miss them
        if group.role == "ssm_state":
            module.ssm_state_size -= int(units.numel())

    def restate(self, module: torch.nn.Module, model: torch.nn.Module) -> Sizes:
        """Restate the mixer's sizes from its weights (n_groups from the B/C width)."""
        mix = module
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
        return {
            "num_heads": mix.num_heads,
            "n_groups": mix.n_groups,
            "state_size": mix.ssm_state_size,
            "intermediate_size": mix.intermediate_size,
        }

    def restore(self, module: torch.nn.Module, sizes: Sizes) -> None:
        """The state size is not in any one weight's shape (in_proj's B/C rows are groups × state)."""
        module.ssm_state_size = int(sizes["state_size"])
