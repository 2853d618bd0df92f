"""Mixture-of-experts layers: each expert's intermediate channels, and whole experts with their router rows.

transformers 5 stores a MoE layer's experts as 3-D parameters (``gate_up_proj`` ``[experts, 2 * I, H]``,
``down_proj`` ``[experts, H, I]``, transposed where ``is_transposed``) applied inside a routing loop that
no trace can follow (top-k, ``histc``, ``index_add_``). So the router and the experts module are opaque
to the trace, and this part states their groups itself:

- ``expert_channels``: one group per expert, its intermediate channels (the gate and up rows of channel
  j, halves or interleaved as ``is_concatenated`` says, and column j of ``down_proj``). The experts of one
  layer share their tensors, so they are tied: every expert loses the same count.
- ``experts``: one group per layer whose units are whole experts: their slices of every 3-D parameter
  and their router rows (and any per-expert router vector, such as a score-correction bias). An expert
  is scored by its channels (``unit_groups``), and the router keeps at least its top-k experts.

Removing experts changes where tokens go, so it is not a zeroing of weights: it equals routing with the
removed experts' logits at minus infinity, which the conformance suite checks.
"""

from __future__ import annotations

from typing import Any

import torch

from ...graph.groups import Group, Member
from ..components import Component
from .base import Part, Sizes, set_if_present

#: experts keep a multiple of this many channels: transformers' default grouped_mm kernel needs rows of
#: 16 bytes (8 channels in 16-bit, 4 in fp32: 8 serves both, so a pruned model can still be cast)
ALIGN = 8
ROUTING = "a router's top-k routing loop (its groups are stated by the experts part)"


class Experts(Part):
    kind = "experts"
    paths = ("mlp", "block_sparse_moe", "feed_forward", "mixer", "moe")
    roles = ("expert_channels", "experts")
    default_roles = ("expert_channels",)
    #: the experts module inside the MoE block, and candidate router names
    experts = "experts"
    routers: tuple[str, ...] = ("gate", "router")
    #: module attributes that restate the experts' width and count
    width_attrs: tuple[str, ...] = ("intermediate_dim", "intermediate_size", "expert_dim")
    count_attrs: tuple[str, ...] = ("num_experts", "num_local_experts", "n_routed_experts")

    # ------------------------------------------------------------------ finding
    def _layout(self, module: torch.nn.Module) -> tuple[torch.nn.Module, str, bool, bool] | None:
        """(experts module, up attribute, gated, transposed), or None if the block holds no such experts."""
        ex = getattr(module, self.experts, None)
        if not isinstance(ex, torch.nn.Module):
            return None
        own = dict(ex.named_parameters(recurse=False))
        up = "gate_up_proj" if "gate_up_proj" in own else "up_proj" if "up_proj" in own else None
        down = own.get("down_proj")
        if up is None or down is None or own[up].dim() != 3 or down.dim() != 3:
            return None
        if not isinstance(getattr(ex, "num_experts", None), int):
            return None
        return ex, up, up == "gate_up_proj", bool(getattr(ex, "is_transposed", False))

    def matches(self, module: torch.nn.Module) -> bool:
        return self._layout(module) is not None

    def router(self, module: torch.nn.Module) -> tuple[str, torch.nn.Module] | None:
        """The router whose ``weight`` has one row per expert, if the block has one."""
        ex = getattr(module, self.experts)
        for name in self.routers:
            r = getattr(module, name, None)
            w = getattr(r, "weight", None)
            if isinstance(w, torch.Tensor) and w.dim() == 2 and w.shape[0] == ex.num_experts:
                return name, r
        return None

    def opaque(self, path: str) -> dict[str, str]:
        names = (self.experts, *self.routers)
        return {pattern: ROUTING for n in names for pattern in (f"*.{path}.{n}", f"*.{path}.{n}.*")}

    def components(self, path: str) -> tuple[Component, ...]:
        where = rf"{path}\." if path else ""
        return (
            Component(
                "experts",
                "expert projections; structured: each expert's intermediate channels",
                weights=(rf"re:\.{where}{self.experts}\.",),
                roles=("expert_channels",),
            ),
            Component(
                "whole_experts", "structured: whole experts with their router rows", roles=("experts",)
            ),
        )

    # ------------------------------------------------------------------ groups
    def groups(self, name: str, module: torch.nn.Module, model: torch.nn.Module) -> list[Group]:
        """Every expert's channel group and the layer's whole-expert group (when it has a router)."""
        ex, up, gated, transposed = self._layout(module)
        ex_name = f"{name}.{self.experts}"
        count, width = self._sizes(ex, up, gated, transposed)
        up_dim, down_dim = (2, 1) if transposed else (1, 2)
        units = torch.arange(width)
        if not gated:
            up_pos, up_units = units, units
        elif getattr(ex, "is_concatenated", True):
            up_pos, up_units = torch.cat([units, units + width]), torch.cat([units, units])
        else:  # interleaved: gate j at 2j, up j at 2j + 1
            up_pos, up_units = (
                torch.stack([2 * units, 2 * units + 1], 1).flatten(),
                units.repeat_interleave(2),
            )
        has_bias = f"{up}_bias" in dict(ex.named_parameters(recurse=False))
        channels = []
        for e in range(count):
            members = [Member(f"{ex_name}.{up}", up_dim, up_pos, up_units, side="out", expert=e)]
            if has_bias:
                members.append(Member(f"{ex_name}.{up}_bias", 1, up_pos, up_units, expert=e))
            members.append(Member(f"{ex_name}.down_proj", down_dim, units, units, side="in", expert=e))
            channels.append(
                Group(f"{ex_name}.{e}", "channels", members, width, role="expert_channels", tie=ex_name,
                      kept_multiple=ALIGN if width % ALIGN == 0 else 1)
            )  # fmt: skip
        found = self.router(module)
        if found is None:
            return channels
        return [*channels, self._whole(name, ex_name, ex, found, count, tuple(channels), model)]

    def _whole(self, name, ex_name, ex, found, count: int, channels, model) -> Group:
        router_name, router = found
        every = torch.arange(count)
        members = [
            Member(
                f"{name}.{router_name}.{attr}", 0, every, every, side="out" if attr == "weight" else "param"
            )
            for attr, p in router.named_parameters(recurse=False)
            if p.dim() >= 1 and p.shape[0] == count
        ]
        members += [
            Member(f"{ex_name}.{attr}", 0, every, every)
            for attr, p in ex.named_parameters(recurse=False)
            if p.dim() >= 2 and p.shape[0] == count
        ]
        members += [  # a per-expert vector on the block itself (MiniMax-M2's score-correction bias)
            Member(f"{name}.{attr}", 0, every, every)
            for attr, p in self._block(ex_name, model).named_parameters(recurse=False)
            if p.dim() == 1 and p.shape[0] == count
        ]
        return Group(
            name, "experts", members, count, role="experts", min_kept=self._top_k(router, model) or 1,
            unit_groups=channels,
        )  # fmt: skip

    @staticmethod
    def _block(ex_name: str, model: torch.nn.Module) -> torch.nn.Module:
        return model.get_submodule(ex_name.rsplit(".", 1)[0])

    @staticmethod
    def _top_k(router: torch.nn.Module, model: torch.nn.Module) -> int | None:
        for obj, attr in ((router, "top_k"), (model.config, "num_experts_per_tok")):
            k = getattr(obj, attr, None)
            if isinstance(k, int):
                return k
        return None

    def _sizes(self, ex, up: str, gated: bool, transposed: bool) -> tuple[int, int]:
        """(experts, intermediate width) from the weights, checking that they chain."""
        up_w, down_w = getattr(ex, up), ex.down_proj
        count = int(down_w.shape[0])
        width = int(down_w.shape[1] if transposed else down_w.shape[2])
        up_out = int(up_w.shape[2] if transposed else up_w.shape[1])
        if up_w.shape[0] != count or up_out != (2 if gated else 1) * width:
            raise ValueError(
                f"{up} {list(up_w.shape)} does not chain with down_proj {list(down_w.shape)}"
                f"{' (stored transposed)' if transposed else ''}"
            )
        return count, width

    def rejects(self, group: Group, module: torch.nn.Module, model: torch.nn.Module) -> str | None:
        if group.role != "experts":
            return None
        groups = [getattr(o, "n_group", None) for o in (module, getattr(module, self.experts))]
        groups.append(getattr(model.config, "n_group", None))
        if any(isinstance(g, int) and g > 1 for g in groups):
            return "its router picks experts within n_group groups of equal size: whole experts stay"
        count = getattr(module, self.experts).num_experts
        prefix = group.name + "."
        cut = {p[len(prefix) :] for p in group.params if p.startswith(prefix)}
        tensors = [*module.named_parameters(), *module.named_buffers()]
        other = [
            n
            for n, t in tensors
            if n not in cut and count in tuple(t.shape) and not n.startswith(f"{self.experts}.")
        ]
        if other:
            return f"its routing reads per-expert values ({other[0]}) that no member cuts: whole experts stay"
        return None

    # ------------------------------------------------------------------ after surgery
    def restate(self, module: torch.nn.Module, model: torch.nn.Module) -> Sizes:
        ex, up, gated, transposed = self._layout(module)
        count, width = self._sizes(ex, up, gated, transposed)
        holders = [ex, module]
        for r_name in self.routers:
            router = getattr(module, r_name, None)
            w = getattr(router, "weight", None)
            if isinstance(w, torch.Tensor) and w.dim() == 2:
                if w.shape[0] != count:
                    raise ValueError(f"router {r_name} has {w.shape[0]} rows for {count} experts")
                holders.append(router)
        for obj in holders:
            set_if_present(obj, self.count_attrs, count)
        set_if_present(ex, self.width_attrs, width)
        k = next((o.top_k for o in holders if isinstance(getattr(o, "top_k", None), int)), None)
        if k is not None and k > count:
            raise ValueError(f"{count} experts left for top-{k} routing")
        return {"intermediate_size": width, "num_experts": count}

    def legacy_sizes(self, flat: dict[str, Any]) -> Sizes:
        return {}
