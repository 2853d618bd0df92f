"""Mixture-of-experts weights as one matrix per expert, so unstructured and N:M pruning reach them.

transformers 5 keeps a MoE layer's experts in one module of 3-D parameters, ``[experts, out, in]``
(Mixtral's ``gate_up_proj`` and ``down_proj``), and applies slices of them with ``F.linear`` inside a
routing loop: there is no ``nn.Linear`` per expert, so the Linear-only target search missed them and no
hook could see an expert's inputs. This module recognises such modules by their attributes and shapes
(never by family name) and gives every expert's projection an ``nn.Linear`` whose weight is a *view* of
its slice of the 3-D parameter, so pruning writes straight into the model's tensor and nothing has to
be copied back. While a prune runs, :func:`split_experts` attaches those Linears and replaces the
module's forward by the same routing loop calling them: forward hooks then see exactly the tokens routed
to each expert (Wanda's norms, SparseGPT's Hessians and GBLM's gradients are per expert). On exit, also
on error, the module is as it was: its own forward, no extra submodules.

Two layouts are recognised (:data:`EXPECTED`): the routed one of ``@use_experts_implementation``
modules (Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek-V2/V3, GraniteMoE, GPT-OSS, ...), and JetMoE's
``ParallelExperts`` (one 3-D ``weight``, inputs already grouped by expert). Recognition ends with a
check that the split forward reproduces the module's own on a few random tokens, so a module that
computes something else under familiar names is refused instead of being calibrated wrongly. Any other
module that holds 3-D parameters and looks like experts (an integer ``num_experts``, or "expert" in its
class name) is an :class:`UnknownExperts`: targeting it is an error naming it, never a silent skip.

Names. Targets, report rows and layer errors are per expert, named where the Linear is attached:
``<experts>.<e>.<projection>`` for the routed layout (``model.layers.0.mlp.experts.3.down_proj``) and
``<module>.<e>`` for JetMoE's. Patterns also match the 3-D parameter's own name
(``mlp.experts.down_proj`` selects that projection of every expert). Masks are reported per parameter:
one ``[experts, ...]`` bool mask under the 3-D parameter's name, in the parameter's own orientation
(:func:`param_masks`), so ``save_pretrained(..., report)`` and ``load_masks`` handle them like any other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..families.blocks import UnsupportedFamilyError, family_name
from ..methods.statistics import Scope, of_scope

EXPECTED = (
    "either the routed layout -- 3-D parameters gate_up_proj (gate rows, then up rows) or up_proj, and "
    "down_proj, each [num_experts, out, in] ([num_experts, in, out] with is_transposed=True), optional "
    "<name>_bias [num_experts, out], act_fn (or _apply_gate), an integer num_experts and "
    "forward(hidden_states, top_k_index, top_k_weights) -- or one 3-D weight [num_experts, out, in] with "
    "forward(inputs, expert_size) over inputs grouped by expert"
)


@dataclass(frozen=True)
class Projection:
    """One 3-D parameter of an experts module, as the per-expert matrices ``F.linear`` applies."""

    attr: str
    #: stored ``[experts, in, out]`` (applied as ``x @ W[e]``)
    transposed: bool = False
    #: the ``[experts, out]`` bias parameter, if any
    bias: str | None = None

    def linear(self, module: torch.nn.Module, e: int) -> torch.nn.Linear:
        """An ``nn.Linear`` whose weight (and bias) are views of expert ``e``'s slice: writes go through."""
        w = module._parameters[self.attr].detach()[e]
        w = w.t() if self.transposed else w
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
        lin.weight = torch.nn.Parameter(w, requires_grad=False)
        lin.prunekit_expert_view = True  # no bias can be created for it (see structured compensation)
        if self.bias is not None:
            lin.bias = torch.nn.Parameter(module._parameters[self.bias].detach()[e], requires_grad=False)
        return lin


@dataclass
class ExpertsSplit:
    """A recognised experts module and its per-expert Linears (views of the 3-D parameters)."""

    name: str
    module: torch.nn.Module
    projections: tuple[Projection, ...]
    #: routed layout: forward(hidden_states, top_k_index, top_k_weights); else forward(inputs, expert_size)
    routed: bool
    #: the module's own forward's parameter names (after self), to bind keyword calls
    arg_names: tuple[str, ...] = ()
    #: expert -> projection attr -> Linear
    per_expert: list[dict[str, torch.nn.Linear]] = field(default_factory=list)
    #: the 3-D parameters the views were taken of (a replaced parameter would leave them stale)
    params: dict[str, torch.nn.Parameter] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.params = {p.attr: self.module._parameters[p.attr] for p in self.projections}
        count = self.params[self.projections[0].attr].shape[0]
        self.per_expert = [{p.attr: p.linear(self.module, e) for p in self.projections} for e in range(count)]

    def slot(self, e: int, attr: str) -> str:
        """Where expert ``e``'s Linear for ``attr`` is attached (its target name)."""
        return f"{self.name}.{e}.{attr}" if self.routed else f"{self.name}.{e}"

    def targets(self) -> dict[str, tuple[torch.nn.Linear, str]]:
        """Target name -> (Linear, the 3-D parameter's name), in expert order."""
        return {
            self.slot(e, attr): (lin, f"{self.name}.{attr}")
            for e, linears in enumerate(self.per_expert)
            for attr, lin in linears.items()
        }

    def forward(self, *args, **kwargs) -> torch.Tensor:
        """The module's computation with every expert matrix applied through its Linear."""
        bound = dict(zip(self.arg_names, args))
        bound.update(kwargs)
        values = [bound[n] for n in self.arg_names]
        return self._routed(*values) if self.routed else self._grouped(*values)

    def _routed(self, hidden_states, top_k_index, top_k_weights) -> torch.Tensor:
        # the eager loop of transformers' experts modules, step for step (so outputs match bit for bit)
        module, up, down = self.module, self.projections[0].attr, self.projections[1].attr
        out = torch.zeros_like(hidden_states)
        with torch.no_grad():
            hits = F.one_hot(top_k_index, num_classes=len(self.per_expert) + 1).permute(2, 1, 0)
        for e, linears in enumerate(self.per_expert):
            # an expert no token reaches still runs on none, so its statistics exist (and say zero)
            top_k_pos, token_idx = torch.where(hits[e])
            y = linears[down](self._activate(linears[up](hidden_states[token_idx])))
            if getattr(module, "has_post_expert_norm", False):
                y = module.post_expert_norm(y)
            y = y * top_k_weights[token_idx, top_k_pos, None]
            out.index_add_(0, token_idx, y.to(out.dtype))
        return out

    def _activate(self, h: torch.Tensor) -> torch.Tensor:
        module = self.module
        if self.projections[0].attr == "up_proj":
            return module.act_fn(h)
        apply_gate = getattr(module, "_apply_gate", None)  # GPT-OSS interleaves and clamps
        if apply_gate is not None:
            return apply_gate(h)
        gate, up = h.chunk(2, dim=-1)
        return module.act_fn(gate) * up

    def _grouped(self, inputs, expert_size) -> torch.Tensor:
        attr = self.projections[0].attr
        parts = inputs.split(expert_size, dim=0)
        return torch.cat([linears[attr](x) for linears, x in zip(self.per_expert, parts)], dim=0)


@dataclass(frozen=True)
class UnknownExperts:
    """A module that holds 3-D expert weights in a layout this module cannot split per expert."""

    name: str
    module: torch.nn.Module
    #: the names of its 3-D parameters (``<module>.<attr>``): what targets and ignore match
    params: tuple[str, ...]
    reason: str
    family: str = ""

    def error(self) -> UnsupportedFamilyError:
        return UnsupportedFamilyError(
            f"{self.family}: {self.name} ({type(self.module).__name__}) holds expert weights "
            f"{list(self.params)} in a layout prunekit cannot prune per expert: {self.reason}. "
            f"Expected {EXPECTED}. Leave them "
            f"out with ignore={list(self.params)!r}"
        )


def find_experts(model: torch.nn.Module) -> list[ExpertsSplit | UnknownExperts]:
    """Every module of ``model`` that holds 3-D parameters and looks like experts, in model order:
    recognised (:class:`ExpertsSplit`, per-expert views built, nothing attached) or not."""
    found: list[ExpertsSplit | UnknownExperts] = []
    for name, module in model.named_modules():
        own = {attr: p for attr, p in module.named_parameters(recurse=False)}
        three_d = tuple(f"{name}.{attr}" for attr, p in own.items() if p.dim() == 3)
        looks = (
            isinstance(getattr(module, "num_experts", None), int) or "expert" in type(module).__name__.lower()
        )
        if not three_d or not looks:
            continue
        layout = _layout(module, own)
        if isinstance(layout, str):
            found.append(UnknownExperts(name, module, three_d, layout, family_name(model)))
            continue
        split = ExpertsSplit(name, module, *layout)
        problem = _mismatch(split)
        found.append(
            split if problem is None else UnknownExperts(name, module, three_d, problem, family_name(model))
        )
    return found


def _layout(module: torch.nn.Module, own: dict) -> tuple[tuple[Projection, ...], bool, tuple[str, ...]] | str:
    """(projections, routed, forward's argument names) of a recognised layout, else why not."""
    count = getattr(module, "num_experts", None)
    if not isinstance(count, int) or isinstance(count, bool):
        return "it has no integer num_experts attribute"
    args = tuple(inspect.signature(type(module).forward).parameters)[1:]
    if set(own) == {"weight"}:
        if own["weight"].dim() != 3 or own["weight"].shape[0] != count or len(args) != 2:
            return "its weight is not [num_experts, out, in] with forward(inputs, expert_size)"
        return (Projection("weight"),), False, args
    up = "gate_up_proj" if "gate_up_proj" in own else "up_proj" if "up_proj" in own else None
    if up is None or "down_proj" not in own:
        return f"it has parameters {sorted(own)}, not gate_up_proj (or up_proj) and down_proj"
    if len(args) < 3:
        return f"its forward takes {list(args)}, not (hidden_states, top_k_index, top_k_weights)"
    transposed = bool(getattr(module, "is_transposed", False))
    projections = tuple(
        Projection(attr, transposed, f"{attr}_bias" if f"{attr}_bias" in own else None)
        for attr in (up, "down_proj")
    )
    problem = _check_routed(module, own, projections, count)
    return problem if problem else (projections, True, args[:3])


def _check_routed(module: torch.nn.Module, own: dict, projections: tuple[Projection, ...], count: int) -> str:
    """Why the routed layout does not fit (shapes, extra parameters or submodules, no activation), or ''."""
    shapes = []
    for p in projections:
        w = own[p.attr]
        if w.dim() != 3 or w.shape[0] != count:
            return f"{p.attr} has shape {list(w.shape)}, not [num_experts={count}, ., .]"
        out_f, in_f = (w.shape[2], w.shape[1]) if p.transposed else (w.shape[1], w.shape[2])
        if p.bias is not None and tuple(own[p.bias].shape) != (count, out_f):
            return f"{p.bias} has shape {list(own[p.bias].shape)}, not [{count}, {out_f}]"
        if getattr(module, "has_bias", False) and p.bias is None:
            return f"has_bias is set but there is no {p.attr}_bias"
        shapes.append((out_f, in_f))
    (up_out, up_in), (down_out, down_in) = shapes
    gated = projections[0].attr == "gate_up_proj"
    if up_in != down_out or up_out != (2 if gated else 1) * down_in:
        return f"{projections[0].attr} {list(shapes[0])} and down_proj {list(shapes[1])} do not chain"
    known = {a for p in projections for a in (p.attr, p.bias) if a}
    if set(own) - known:
        return f"it has parameters {sorted(set(own) - known)} the layout does not use"
    post_norm = bool(getattr(module, "has_post_expert_norm", False))
    for child, sub in module.named_children():
        if any(True for _ in sub.parameters()) and not (post_norm and child == "post_expert_norm"):
            return f"its submodule {child!r} has parameters the layout does not use"
    if not callable(getattr(module, "act_fn", None)) and not (gated and hasattr(module, "_apply_gate")):
        return "it has no act_fn"
    return ""


@torch.no_grad()
def _mismatch(split: ExpertsSplit, tokens: int = 8) -> str | None:
    """Why the split forward does not reproduce the module's own on a few random tokens, or None.

    A local generator keeps the global random state untouched; meta tensors (a skeleton) are not run."""
    first = split.params[split.projections[0].attr]
    if first.is_meta:
        return None
    gen = torch.Generator().manual_seed(0)
    count, lin = len(split.per_expert), split.per_expert[0][split.projections[0].attr]
    x = torch.randn(tokens, lin.in_features, generator=gen).to(first.device, first.dtype)
    if split.routed:
        k = min(2, count)
        index = torch.stack([torch.randperm(count, generator=gen)[:k] for _ in range(tokens)])
        weights = torch.rand(tokens, k, generator=gen).to(first.device, first.dtype)
        args = (x, index.to(first.device), weights)
    else:
        sizes = [tokens // count + (e < tokens % count) for e in range(count)]
        args = (x, sizes)
    try:
        expected, got = split.module(*args), split.forward(*args)
    except Exception as err:  # a forward that takes other inputs than the layout says
        return f"its forward cannot be reproduced per expert ({type(err).__name__}: {err})"
    tol = 1e-4 if first.dtype in (torch.float32, torch.float64) else 3e-2
    if expected.shape != got.shape or not torch.allclose(expected.float(), got.float(), rtol=tol, atol=tol):
        return "its forward computes something other than the layout implies (checked on random tokens)"
    return None


@contextlib.contextmanager
def split_experts(splits: Sequence[ExpertsSplit]) -> Iterator[None]:
    """Attach every split's per-expert Linears and route its forward through them, for the duration.

    Raises ``RuntimeError`` before attaching anything when a 3-D parameter was replaced after the views
    were taken (writes would land in a tensor the model no longer uses), or when the module already has
    an attribute where an expert's Linears would go."""
    for s in splits:
        for attr, param in s.params.items():
            if s.module._parameters.get(attr) is not param:
                raise RuntimeError(f"{s.name}.{attr} was replaced after its experts were split: plan again")
        taken = [str(e) for e in range(len(s.per_expert)) if hasattr(s.module, str(e))]
        if taken:
            raise RuntimeError(f"{s.name} already has attributes {taken}: its experts cannot be attached")
    installed: list[tuple[ExpertsSplit, object]] = []
    try:
        for s in splits:
            installed.append((s, s.module.__dict__.get("forward")))
            for e, linears in enumerate(s.per_expert):
                holder = torch.nn.Module() if s.routed else next(iter(linears.values()))
                if s.routed:
                    for attr, lin in linears.items():
                        holder.add_module(attr, lin)
                s.module.add_module(str(e), holder)
            s.module.forward = s.forward
        yield
    finally:
        for s, previous in reversed(installed):
            for e in range(len(s.per_expert)):
                s.module._modules.pop(str(e), None)
            if previous is not None:
                s.module.forward = previous
            else:
                s.module.__dict__.pop("forward", None)


def param_masks(masks: dict[str, torch.Tensor], splits: Sequence[ExpertsSplit]) -> dict[str, torch.Tensor]:
    """Module-name masks -> parameter-name masks: ``<module>.weight`` for ordinary modules, and for
    experts one ``[experts, ...]`` mask per 3-D parameter, in its own orientation (experts that were not
    targeted stay all False)."""
    slots = {
        s.slot(e, p.attr): (s, e, p) for s in splits for e in range(len(s.per_expert)) for p in s.projections
    }
    out: dict[str, torch.Tensor] = {}
    for name, mask in masks.items():
        if name not in slots:
            out[f"{name}.weight"] = mask
            continue
        s, e, p = slots[name]
        param = s.params[p.attr]
        full = out.setdefault(
            f"{s.name}.{p.attr}", torch.zeros(param.shape, dtype=torch.bool, device=mask.device)
        )
        full[e] = mask.t() if p.transposed else mask
    return out


def splits_for(model: torch.nn.Module, groups: Sequence) -> dict[str, ExpertsSplit]:
    """The split of every experts module a group (or an expert's channels) has members in, by module name.

    Raises:
        UnsupportedFamilyError: such a module's layout cannot be split per expert.
    """
    wanted = {
        m.module for g in groups for sub in (g, *g.unit_groups) for m in sub.members if m.expert is not None
    }
    if not wanted:
        return {}
    out: dict[str, ExpertsSplit] = {}
    for found in find_experts(model):
        if found.name not in wanted:
            continue
        if isinstance(found, UnknownExperts):
            raise found.error()
        out[found.name] = found
    missing = sorted(wanted - set(out))
    if missing:
        raise UnsupportedFamilyError(f"{family_name(model)}: no experts module recognised at {missing}")
    return out


def view_group(group, splits: dict[str, ExpertsSplit]):
    """``group`` as the per-expert Linears see it while :func:`split_experts` holds: members in an
    expert's slice of a 3-D parameter become members of that expert's Linear (its ``[out, in]`` weight,
    or its bias), so statistics, scorers and compensation treat it as any layer."""
    if not any(m.expert is not None for m in group.members):
        return group
    members = []
    for m in group.members:
        if m.expert is None:
            members.append(m)
            continue
        split = splits[m.module]
        proj = next(p for p in split.projections if m.attr in (p.attr, p.bias))
        slot = split.slot(m.expert, proj.attr)
        if m.attr == proj.bias:
            members.append(dataclasses.replace(m, param=f"{slot}.bias", dim=0, expert=None))
        else:
            dim = m.dim - 1
            dim = 1 - dim if proj.transposed else dim
            members.append(dataclasses.replace(m, param=f"{slot}.weight", dim=dim, expert=None))
    return dataclasses.replace(group, members=members, unit_groups=())


def check_expert_groups(groups: Sequence, mode: str, scorer) -> None:
    """What structured pruning of experts cannot do, as an error before anything is touched."""
    whole = [g for g in groups if g.kind == "experts"]
    if whole and mode != "hard":
        raise ValueError(
            f"removing whole experts ({whole[0].name}) re-routes tokens, which zeros cannot express: "
            "use mode='hard', or leave role 'experts' out of the targets"
        )
    both = {g.name for g in whole} & {g.tie.rsplit(".", 1)[0] for g in groups if g.tie}
    if both:
        raise ValueError(
            f"{sorted(both)[0]}: whole experts and their channels in one call would count the channels of "
            "removed experts twice; remove experts first, then prune their channels in a second call"
        )
    has_experts = any(m.expert is not None for g in groups for m in g.members) or bool(whole)
    if has_experts and of_scope(scorer.requires, Scope.MODEL):
        raise ValueError(
            f"method {scorer.name!r} scores with full-model gradients, which the experts' per-expert "
            "views do not carry: use a block-wise method (wanda-sp, flap, magnitude-sp) for experts"
        )
