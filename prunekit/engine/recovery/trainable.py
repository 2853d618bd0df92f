"""Which tensors recovery trains, and how they are attached to, merged into or dropped from a model.

:func:`choose` resolves a :class:`~prunekit.spec.recovery.RecoverySpec`'s trainable sets on a model
(biases, normalisation weights, the LM head, LoRA on the targeted matrices) and checks them, writing
nothing; :meth:`Choice.attach` then registers one ``torch.nn.utils.parametrize`` update per tensor
(:mod:`prunekit.methods.lora`), so every code path that reads the weight (a Linear, transformers'
``Conv1D``, Mamba's mixer, a tied embedding) computes with the adapted one. :meth:`Trainables.merge`
writes the effective tensors into the model's own parameters (ties kept: a shared matrix is written
once), :meth:`Trainables.discard` removes the updates and any bias created for them, leaving the model
exactly as it was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch.nn.utils import parametrize

from ...families import Adapter
from ...methods.lora import LowRank, Offset
from ...spec import SpecError
from ...spec.recovery import RecoverySpec
from ..targets import weight_targets


@dataclass
class Slot:
    """One tensor to train: ``holders`` are the (module, attribute) pairs that share it."""

    name: str
    kind: str  # "lora", "lm_head", "bias", "norm"
    holders: list[tuple[torch.nn.Module, str]]
    create_bias: bool = False


@dataclass
class Choice:
    """The resolved trainable sets of one model (or one block), nothing attached yet."""

    model: torch.nn.Module
    spec: RecoverySpec
    slots: list[Slot]
    notes: list[str] = field(default_factory=list)

    def attach(self, seed: int) -> Trainables:
        """Register every update; on any failure the ones already registered are removed."""
        out = Trainables(self.model)
        try:
            gen = torch.Generator().manual_seed(seed)
            for slot in self.slots:
                out.add(slot, self._update(slot, gen))
        except BaseException:
            out.discard()
            raise
        return out

    def _update(self, slot: Slot, gen: torch.Generator) -> torch.nn.Module:
        module, attr = slot.holders[0]
        if slot.create_bias:
            return Offset(torch.Size([module.weight.shape[0]]), module.weight.device)
        tensor = getattr(module, attr)
        if slot.kind in ("lora", "lm_head"):
            shape = tensor.shape
            return LowRank(self.spec.lora, shape, self.spec.rank, self.spec.scaling, gen, tensor.device)
        return Offset(tensor.shape, tensor.device)


class Trainables:
    """The updates attached to a model: their parameters, count, merge and discard."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.updates: list[tuple[Slot, torch.nn.Module]] = []
        self.created: list[str] = []
        self._added_before = list(
            getattr(getattr(model, "config", None), "prunekit_added_biases", None) or []
        )

    def add(self, slot: Slot, update: torch.nn.Module) -> None:
        if slot.create_bias:
            module = slot.holders[0][0]
            module.bias = torch.nn.Parameter(
                torch.zeros(module.weight.shape[0], dtype=module.weight.dtype, device=module.weight.device),
                requires_grad=False,
            )
            self.created.append(slot.name.rpartition(".")[0])
        self.updates.append((slot, update))
        for module, attr in slot.holders:
            parametrize.register_parametrization(module, attr, update)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for _slot, update in self.updates for p in update.parameters()]

    def count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def count_by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for slot, update in self.updates:
            out[slot.kind] = out.get(slot.kind, 0) + sum(p.numel() for p in update.parameters())
        return out

    @torch.no_grad()
    def merge(self) -> None:
        """Write every effective tensor into the model's own parameter and remove the updates."""
        for slot, update in self.updates:
            module, attr = slot.holders[0]
            original = module.parametrizations[attr].original
            value = update.merged(original)
            for holder, name in slot.holders:
                parametrize.remove_parametrizations(holder, name, leave_parametrized=False)
            original.copy_(value)
        self._record_created()
        self.updates = []

    @torch.no_grad()
    def discard(self) -> None:
        """Remove every update and created bias: the model is bit-identical to before :meth:`attach`."""
        for slot, _update in reversed(self.updates):
            for holder, name in slot.holders:
                if parametrize.is_parametrized(holder, name):
                    parametrize.remove_parametrizations(holder, name, leave_parametrized=False)
        for name in self.created:
            self.model.get_submodule(name).bias = None
        self.updates, self.created = [], []

    def _record_created(self) -> None:
        if self.created and hasattr(self.model, "config"):
            self.model.config.prunekit_added_biases = sorted(set(self._added_before) | set(self.created))


def choose(
    model: torch.nn.Module,
    spec: RecoverySpec,
    adapter: Adapter,
    blocks: list[torch.nn.Module],
    within: str | None = None,
) -> Choice:
    """The trainable tensors of ``model`` (only those under module prefix ``within`` when given; the
    whole-model call is the one that checks, a block may simply have nothing of a set).

    Raises:
        SpecError: a LoRA rank above a targeted matrix's dimensions, LoRA targets or a trainable set that
            match nothing, an LM head requested where there is none.
    """
    names = {id(m): n for n, m in model.named_modules()}
    inside = _under(within)
    notes: list[str] = []
    slots: list[Slot] = []
    taken: set[int] = set()
    lora_mods = (
        _lora_modules(model, spec, blocks, notes) if "lora" in spec.train or spec.create_biases else {}
    )
    lora_mods = {n: m for n, m in lora_mods.items() if inside(n)}
    if "lm_head" in spec.train:
        slots.append(_head_slot(model, names, spec))
        taken.add(id(slots[-1].holders[0][0].weight))
    if "lora" in spec.train:
        if not lora_mods and within is None:
            raise SpecError("lora_targets match no matrix inside the blocks", "lora_targets")
        for name, mod in lora_mods.items():
            if id(mod.weight) in taken:
                continue
            _check_rank(name, mod.weight, spec.rank)
            taken.add(id(mod.weight))
            slots.append(Slot(f"{name}.weight", "lora", _holders(model, mod.weight, "weight")))
    if "norms" in spec.train:
        norms = {n: m for n, m in adapter.norm_modules(model).items() if inside(n)}
        if not norms:
            _missing(spec, notes, "train has 'norms', but the model has no normalisation layer", within)
        slots += [Slot(f"{n}.weight", "norm", [(m, "weight")]) for n, m in norms.items()]
    if "biases" in spec.train:
        slots += _bias_slots(model, spec, lora_mods, inside, notes, within)
    return Choice(model, spec, slots, notes)


def _under(prefix: str | None):
    return (lambda name: True) if prefix is None else (lambda name: name.startswith(prefix + "."))


def _lora_modules(model, spec: RecoverySpec, blocks, notes: list[str]) -> dict[str, torch.nn.Module]:
    """The matrices that get adapters: the default targets (every Linear inside the blocks) or the
    spec's patterns; per-expert matrices of a mixture-of-experts layer are left out, with a note."""
    try:
        found = weight_targets(model, blocks, targets=spec.lora_targets)
    except ValueError as err:
        raise SpecError(f"lora_targets: {err}", "lora_targets") from None
    modules = dict(model.named_modules())
    out = {}
    for name, mod in found.items():
        if modules.get(name) is not mod or getattr(mod, "weight", None) is None or mod.weight.dim() < 2:
            notes.append(f"{name}: not a module's own matrix (a mixture-of-experts slot); no adapter")
            continue
        out[name] = mod
    return out


def _check_rank(name: str, weight: torch.Tensor, rank: int) -> None:
    rows, cols = weight.shape[0], math.prod(weight.shape[1:])
    if rank > min(rows, cols):
        raise SpecError(
            f"LoRA rank {rank} exceeds the dimensions of {name} ({rows}x{cols}): "
            f"use rank <= {min(rows, cols)} or leave it out of lora_targets",
            "rank",
        )


def _head_slot(model, names: dict[int, str], spec: RecoverySpec) -> Slot:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "weight", None) is None:
        raise SpecError("train has 'lm_head', but the model has no output embedding", "train")
    _check_rank(names[id(head)], head.weight, spec.rank)
    return Slot(f"{names[id(head)]}.weight", "lm_head", _holders(model, head.weight, "weight"))


def _holders(model, tensor: torch.Tensor, attr: str) -> list[tuple[torch.nn.Module, str]]:
    """Every module holding ``tensor`` as ``attr`` (a tied embedding and LM head share one matrix)."""
    return [(m, attr) for m in model.modules() if m._parameters.get(attr) is tensor]


def _bias_slots(model, spec: RecoverySpec, lora_mods: dict, inside, notes: list[str], within) -> list[Slot]:
    slots, seen = [], set()
    for name, mod in model.named_modules():
        bias = mod._parameters.get("bias")
        if bias is not None and inside(name) and id(bias) not in seen:
            seen.add(id(bias))
            slots.append(Slot(f"{name}.bias", "bias", _holders(model, bias, "bias")))
    if spec.create_biases:
        for name, mod in lora_mods.items():
            if mod._parameters.get("bias") is None and isinstance(mod, torch.nn.Linear):
                slots.append(Slot(f"{name}.bias", "bias", [(mod, "bias")], create_bias=True))
    if not slots:
        _missing(
            spec,
            notes,
            "train has 'biases', but no module here has a bias: pass create_biases=True "
            "to add them, or leave 'biases' out of train",
            within,
        )
    return slots


def _missing(spec: RecoverySpec, notes: list[str], problem: str, within: str | None) -> None:
    """A set the user asked for that matches nothing in the model is an error, a default one a note;
    within one block (reconstruction) an empty set is simply nothing to train there."""
    if within is not None:
        return
    if spec.train_given:
        raise SpecError(problem, "train")
    notes.append(problem.replace("train has", "the default train set has"))
