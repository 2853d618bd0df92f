"""Mamba-2: SSM heads (grouped by their B/C group), state dims, gated RMSNorm over groups."""

from __future__ import annotations

import torch

from ..graph.groups import Group
from .base import register_adapter, resize_depthwise_conv, resize_linear, resize_parameter
from .components import Component
from .mixers import MixerAdapter


@register_adapter
class Mamba2Adapter(MixerAdapter):
    name = "mamba2"
    model_types = ("mamba2",)
    supported_roles = ("residual", "ssm_heads", "ssm_state")
    default_structured_roles = ("ssm_heads",)
    layer_fields = ("num_heads", "n_groups", "state_size", "intermediate_size")
    components = (
        Component(
            "in_proj", "the input projection (z, x, B, C, dt segments)", weights=(r"re:mixer\.in_proj$",)
        ),
        Component("out_proj", "the output projection", weights=(r"re:mixer\.out_proj$",)),
        Component(
            "ssm_heads",
            "structured: whole SSM heads (in_proj z/x/dt rows, conv1d, A_log, D, dt_bias, norm, out_proj)",
            roles=("ssm_heads",),
        ),
        Component("state", "structured: SSM state dims (in_proj B/C rows, conv1d)", roles=("ssm_state",)),
    )
    bias_flags = {"use_bias": ("mixer.in_proj", "mixer.out_proj")}

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

    def on_removed(self, model: torch.nn.Module, group: Group, units: torch.Tensor) -> None:
        # n_groups is read back from the shapes in sync(): when every head has its own B/C group, the
        # trace folds the groups into the heads (no outer units), so counting outer units would miss them
        if group.role == "ssm_state":
            model.get_submodule(group.name).ssm_state_size -= int(units.numel())

    @staticmethod
    def sync_mixer(mix: torch.nn.Module) -> dict:
        """Restate one mixer's sizes from its weights (n_groups from the B/C width); return its fields."""
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

    def apply_layer_fields(self, model: torch.nn.Module, per_layer: list[dict]) -> None:
        hidden = int(model.config.hidden_size)
        for i, (layer, fields) in enumerate(zip(self.layers(model), per_layer)):
            mix = layer.mixer
            heads, groups = fields["num_heads"], fields["n_groups"]
            state, inner = fields["state_size"], fields["intermediate_size"]
            if inner != heads * mix.head_dim or heads % groups:
                raise ValueError(
                    f"layer {i}: {heads} heads of {mix.head_dim} channels in {groups} groups do not give "
                    f"intermediate_size {inner}"
                )
            # the gated-MLP part of in_proj (zero wide in released models) is not pruned: keep its width
            d_mlp = (
                mix.in_proj.out_features
                - 2 * mix.intermediate_size
                - 2 * mix.n_groups * mix.ssm_state_size
                - mix.num_heads
            ) // 2
            conv_dim = inner + 2 * groups * state
            resize_linear(mix.in_proj, 2 * d_mlp + inner + conv_dim + heads, hidden)
            resize_depthwise_conv(mix.conv1d, conv_dim)
            for name in ("dt_bias", "A_log", "D"):
                resize_parameter(mix, name, (heads,))
            resize_parameter(mix.norm, "weight", (inner,))
            resize_linear(mix.out_proj, hidden, inner)
            mix.ssm_state_size = state
        self.finish_layer_fields(model, per_layer)

    def plain_config_fields(self, model: torch.nn.Module, per_layer: list[dict]) -> dict | None:
        """Mamba2Config derives the inner width as ``expand * hidden_size`` (``expand`` an int) and checks
        it against ``num_heads * head_dim``: uniform blocks are expressible only when the inner width is a
        multiple of the hidden size."""
        fields = super().plain_config_fields(model, per_layer)
        hidden = int(model.config.hidden_size)
        if fields is None or fields["intermediate_size"] % hidden:
            return None
        return {**fields, "expand": fields["intermediate_size"] // hidden}

    def base_config_fields(self, model: torch.nn.Module, per_layer: list[dict]) -> dict:
        """``num_heads`` must agree with ``expand`` for the config to validate at all."""
        cfg = model.config
        fields = super().base_config_fields(model, per_layer)
        fields.pop("intermediate_size", None)
        return {**fields, "num_heads": int(cfg.expand) * int(cfg.hidden_size) // int(cfg.head_dim)}
