"""Attention: whole query heads (with their KV group's share under GQA) are the units.

Projections are named as data, so one part serves Llama's ``q/k/v/o_proj``, OPT's ``out_proj``, Phi's
``dense`` and fused projections (GPT-2's ``c_attn``, GPT-NeoX's ``query_key_value``, MPT's ``Wqkv``): the
trace finds which rows of a fused projection belong to which head; this part only restates the counts.
Modules that keep a head count or a head-width attribute in forward (OPT's ``num_heads``, GPT-2's
``split_size``) name it in ``heads_attrs`` / ``width_attrs``; whatever of those a module has is restated.
"""

from __future__ import annotations

import torch

from ...graph.groups import Group
from .. import kv_index
from ..components import Component
from .base import Part, Sizes, in_features, out_features, set_if_present


class Attention(Part):
    kind = "attention"
    paths = ("self_attn", "attn", "attention", "self_attention")
    roles = ("attention",)
    default_roles = ("attention",)
    #: separate projections; ``qkv`` names a fused one instead of q, k and v
    q, k, v, o = "q_proj", "k_proj", "v_proj", "o_proj"
    qkv: str | None = None
    config_fields = {
        "num_attention_heads": "num_attention_heads",
        "num_key_value_heads": "num_key_value_heads",
    }
    own_fields = ("kv_group_sizes",)
    heads_attrs: tuple[str, ...] = ("num_heads", "num_attention_heads", "n_heads", "n_head")
    kv_heads_attrs: tuple[str, ...] = ("num_key_value_heads", "num_kv_heads")
    width_attrs: tuple[str, ...] = ()
    #: whether the family's attention runs uneven KV groups through :mod:`..kv_index` (its eager path is
    #: Llama's and it repeats KV heads by ``num_key_value_groups``)
    uneven_kv = False
    #: q's output channels per query channel: 2 where q also yields each head's output gate (Qwen3.5)
    q_factor = 1
    #: why its heads cannot be removed layer by layer (the code reads a model-wide head count), or None
    fixed_heads: str | None = None

    def components(self, path: str) -> tuple[Component, ...]:
        names = "|".join(self.projection_names().values())
        return (
            Component(
                "attention",
                "query/key/value/output projections; structured: whole heads (with their KV group's share)",
                weights=(rf"re:\.{path}\.({names})$",),
                roles=("attention",),
            ),
        )

    def projection_names(self) -> dict[str, str]:
        if self.qkv:
            return {"qkv": self.qkv, "o": self.o}
        return {"q": self.q, "k": self.k, "v": self.v, "o": self.o}

    def projections(self, module: torch.nn.Module) -> dict[str, torch.nn.Module]:
        found = {key: getattr(module, name, None) for key, name in self.projection_names().items()}
        return {k: m for k, m in found.items() if isinstance(getattr(m, "weight", None), torch.Tensor)}

    def matches(self, module: torch.nn.Module) -> bool:
        return len(self.projections(module)) == (2 if self.qkv else 4)

    def head_dim(self, module: torch.nn.Module, model: torch.nn.Module) -> int:
        for name in ("head_dim", "head_size"):
            value = getattr(module, name, None)
            if isinstance(value, int):
                return value
        cfg = model.config
        return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)

    # ------------------------------------------------------------------ groups
    def role(self, group: Group, name: str, module: torch.nn.Module) -> str | None:
        if f"{name}.{self.o}.weight" not in group.params:
            return None
        return {"heads": "attention", "inner": "head_dim"}.get(group.kind, "attention_channels")

    def rejects(self, group: Group, module: torch.nn.Module, model: torch.nn.Module) -> str | None:
        head_dim = self.head_dim(module, model)
        if group.role == "attention" and self.fixed_heads:
            return f"{type(module).__name__}: {self.fixed_heads}"
        if group.role == "head_dim":
            return f"{type(module).__name__} views its projections with one head_dim: head_dim is fixed"
        if group.role == "attention_channels":
            return f"{type(module).__name__}: channels of its projections that are not whole heads"
        if group.block_size != head_dim:
            return f"heads of {group.block_size} channels do not match head_dim {head_dim}"
        if _is_uneven(_group_sizes(module)) and not self.runs_uneven(group, module, model):
            return (
                "its query heads map to key/value heads by an index (uneven groups from an earlier "
                "pruning); prune its heads again from the dense model"
            )
        return None

    def runs_uneven(self, group: Group, module: torch.nn.Module, model: torch.nn.Module) -> bool:
        return self.uneven_kv and kv_index.base_implementation(model.config) is not None

    # ------------------------------------------------------------------ after surgery
    def counts(self, module: torch.nn.Module, model: torch.nn.Module) -> tuple[int, int]:
        """(query heads, KV heads) read from the projections' shapes."""
        head_dim, proj = self.head_dim(module, model), self.projections(module)
        n_q = in_features(proj["o"]) // head_dim
        if self.qkv:
            return n_q, (out_features(proj["qkv"]) // head_dim - n_q) // 2
        return n_q, out_features(proj["k"]) // head_dim

    def check_widths(self, module: torch.nn.Module, model: torch.nn.Module, n_q: int, n_kv: int) -> None:
        """Every projection must be as wide as the head counts say (a checkpoint may disagree)."""
        head_dim, proj = self.head_dim(module, model), self.projections(module)
        want = {"q": n_q * self.q_factor, "k": n_kv, "v": n_kv, "qkv": n_q + 2 * n_kv}
        for key, mod in proj.items():
            got = in_features(mod) if key == "o" else out_features(mod)
            if key != "o" and got != want[key] * head_dim:
                name = self.projection_names()[key]
                raise ValueError(
                    f"{name} has {got} output channels, not {want[key]} heads of {head_dim} "
                    f"({n_q} query heads by {self.o}, {n_kv} key/value heads)"
                )
            if key == "o" and got % head_dim:
                raise ValueError(f"{self.o} has {got} inputs, not whole heads of {head_dim}")

    def before_hidden_change(self, module: torch.nn.Module, model: torch.nn.Module) -> None:
        if _group_sizes(module) is None:
            n_q, n_kv = self.counts(module, model)
            module.prunekit_kv_group_sizes = [n_q // max(1, n_kv)] * n_kv

    def on_removed(self, module: torch.nn.Module, group: Group, units: torch.Tensor) -> None:
        """Record how many query heads each surviving KV head serves (``units`` are query heads, in
        order; a KV head goes when all of its query heads go)."""
        if group.role != "attention":
            return
        sizes = _group_sizes(module)  # recorded by before_hidden_change, from the shapes before the cut
        owner = kv_index.kv_index(sizes)
        lost = torch.bincount(owner[units.cpu()], minlength=len(sizes)).tolist()
        module.prunekit_kv_group_sizes = [k - d for k, d in zip(sizes, lost) if k > d]

    def restate(self, module: torch.nn.Module, model: torch.nn.Module) -> Sizes:
        n_q, n_kv = self.counts(module, model)
        self.check_widths(module, model, n_q, n_kv)
        sizes = _group_sizes(module) or [n_q // max(1, n_kv)] * n_kv
        if len(sizes) != n_kv or sum(sizes) != n_q or min(sizes, default=0) < 1:
            raise ValueError(f"KV group sizes {sizes} do not fit {n_q} query and {n_kv} KV heads")
        _set_index(module, sizes)
        set_if_present(module, self.heads_attrs, n_q)
        set_if_present(module, self.kv_heads_attrs, n_kv)
        set_if_present(module, self.width_attrs, n_q * self.head_dim(module, model))
        return {"num_attention_heads": n_q, "num_key_value_heads": n_kv, "kv_group_sizes": list(sizes)}

    # ------------------------------------------------------------------ loading
    def restore(self, module: torch.nn.Module, sizes: Sizes) -> None:
        module.prunekit_kv_group_sizes = list(_with_default_sizes(sizes)["kv_group_sizes"])

    def legacy_sizes(self, flat: dict) -> Sizes:
        return _with_default_sizes(
            {
                k: flat[k]
                for k in ("num_attention_heads", "num_key_value_heads", "kv_group_sizes")
                if k in flat
            }
        )


def is_uneven_sizes(sizes: Sizes) -> bool:
    """Whether recorded attention sizes have KV groups keeping different numbers of query heads."""
    return _is_uneven(sizes.get("kv_group_sizes"))


def _group_sizes(module: torch.nn.Module) -> list[int] | None:
    return getattr(module, "prunekit_kv_group_sizes", None)


def _is_uneven(sizes: list[int] | None) -> bool:
    return bool(sizes) and len(set(sizes)) > 1


def _with_default_sizes(fields: dict) -> dict:
    """Sizes recorded before ``kv_group_sizes`` existed: equal groups."""
    if "kv_group_sizes" in fields:
        return fields
    n_q, n_kv = fields.get("num_attention_heads"), fields.get("num_key_value_heads")
    if isinstance(n_q, int) and isinstance(n_kv, int) and n_kv > 0:
        return {**fields, "kv_group_sizes": [n_q // n_kv] * n_kv}
    return fields


def _set_index(module: torch.nn.Module, sizes: list[int]) -> None:
    """Equal groups: transformers' own repeat. Uneven: one KV head per query head, gathered by index."""
    module.prunekit_kv_group_sizes = list(sizes)
    if _is_uneven(sizes):
        module.num_key_value_groups = 1
        weight = next(module.parameters())
        module.register_buffer(
            kv_index.BUFFER, kv_index.kv_index(sizes, device=weight.device), persistent=False
        )
        return
    if hasattr(module, "num_key_value_groups"):
        module.num_key_value_groups = sizes[0]
    if kv_index.BUFFER in module._buffers:
        del module._buffers[kv_index.BUFFER]
