"""The checks every family prunekit supports must pass, as a mixin a family's test class inherits.

A class sets ``model_type`` (and may override :meth:`FamilyConformance.make_config`); its tiny model
comes from :mod:`family_configs`. The checks, one test each:

(a) removing units of any group that no normalization spans computes exactly what zeroing them computes
    (each such group alone with random units, then all of them at once);
(b) ``prunekit.prune(method="wanda-sp", sparsity=0.3, structure="structured")`` removes 30 % (within one
    unit) of every group of every role the family prunes by default -- all of those roles, so a family
    whose MLPs shrink but whose attention silently does not fails; the roles found are recorded as the
    test's ``structured_kinds`` property;
(c) the pruned model generates with a cache, and greedy generation with the cache equals generation
    without it (tokens and logits);
(d) ``prunekit.save_pretrained`` -> ``prunekit.from_pretrained`` gives back the same tensors and logits,
    bit for bit, after unstructured and after structured pruning;
(e) the roles the family prunes by default are among the roles of its traced groups;
(f) in a mixture of experts, removing whole experts computes what the dense model computes when its
    routers never pick them (their logits at minus infinity), the routers lose their rows, and the
    result generates and reloads (families without experts skip it).

Groups tied together (the experts of one layer share their tensors, so they lose equal counts) are
drawn together in (a).

A check a family is known to fail goes in the class's ``known_failures`` (test name -> the precise
reason): it then runs as a strict xfail, so it is reported, and fixing it is noticed.

Weights are redrawn to O(1) scale first (transformers' 0.02 init makes every logit ~0, and a tolerance
meaningless). The dense model, its trace and the pruned models are built once per class.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
from typing import Any, ClassVar

import pytest
import torch
from family_configs import build, tiny_config, vocab_size
from family_support import default_roles

import prunekit
from prunekit.families import get_adapter

ATOL = RTOL = 1e-4
SPARSITY = 0.3

#: per class: what is built once and only ever deep-copied by the tests
_CACHE: dict[tuple[type, str], Any] = {}


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """O(1) activations: matrices ~ N(0, 1/fan_in), norm scales and skip gains near 1, small biases."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if p.dim() >= 2:
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel()))
        elif "norm" in name or leaf == "D":
            p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
        elif leaf == "A_log":
            p.copy_(torch.rand(p.shape, generator=gen) * 2 - 1)
        else:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


def random_count(rng: random.Random, group: prunekit.Group) -> int:
    """A random number of units to drop that leaves ``min_kept`` and a multiple of ``kept_multiple``."""
    step = group.kept_multiple
    kept = rng.randint(max(1, group.min_kept, step) // step, (group.num_units - 1) // step) * step
    return group.num_units - kept


def random_units(
    rng: random.Random, group: prunekit.Group, uneven: bool, count: int | None = None
) -> list[int]:
    """A valid, non-empty random set of units to drop (``count`` of them if given): any for plain groups
    (and grouped heads whose family runs uneven KV groups); otherwise whole KV (B/C) groups and the same
    count from the rest."""
    n = group.num_units
    if not group.num_outer or uneven:
        return sorted(rng.sample(range(n), count if count is not None else random_count(rng, group)))
    outer, per = group.num_outer, group.units_per_outer
    gone = rng.randint(0 if per > 1 else 1, outer - 1)
    keep = rng.randint(1, per - (1 if gone == 0 else 0))
    order = rng.sample(range(outer), outer)
    units = [o * per + u for o in order[:gone] for u in range(per)]
    for o in order[gone:]:
        units += [o * per + h for h in rng.sample(range(per), per - keep)]
    return sorted(units)


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def random_decision(rng: random.Random, groups, model) -> list:
    """Random units for every group of ``groups``; groups with a common ``tie`` (the experts of one
    layer, which share their tensors) lose the same random count."""
    adapter, counts = get_adapter(model), {}
    decision = []
    for g in groups:
        count = None
        if g.tie:
            count = counts.setdefault(g.tie, random_count(rng, g))
        decision.append((g, random_units(rng, g, adapter.runs_uneven_groups(model, g), count)))
    return decision


def ties_together(groups) -> list[list]:
    """The groups one by one, except that tied groups come together (they cannot be cut alone)."""
    out, seen = [], {}
    for g in groups:
        if not g.tie:
            out.append([g])
        elif g.tie not in seen:
            seen[g.tie] = len(out)
            out.append([g])
        else:
            out[seen[g.tie]].append(g)
    return out


def removed_units(group: prunekit.Group, before: dict, model: torch.nn.Module, others) -> float:
    """How many of ``group``'s units a hard prune removed, read off a member dimension that no other
    targeted group shares: its lost length over the group's positions per unit (an expert's slice of a
    3-D tensor counts as its own: the experts of a tensor lose the same count)."""
    shared = {(m.param, m.dim, m.expert) for g in others if g is not group for m in g.members}
    for m in group.members:
        if m.per_outer or (m.param, m.dim, m.expert) in shared:
            continue
        lost = before[m.param][m.dim] - model.get_parameter(m.param).shape[m.dim]
        return lost * group.num_units / len(m.positions)
    raise AssertionError(f"group {group.name!r} has no member dimension of its own to measure")


class FamilyConformance:
    """Mixin: set ``model_type``; every ``test_*`` below then runs on that family's tiny model."""

    model_type: ClassVar[str] = ""
    #: test name (or "name[param]") -> why the family fails it (the test becomes a strict xfail)
    known_failures: ClassVar[dict[str, str]] = {}

    def make_config(self):
        return tiny_config(self.model_type)

    @pytest.fixture(autouse=True)
    def _known_failure(self, request):
        node = request.node  # a parametrized test may be listed with its id, "test_x[structured]"
        reason = self.known_failures.get(node.name) or self.known_failures.get(node.originalname)
        if reason:
            request.applymarker(pytest.mark.xfail(reason=reason, strict=True))

    # ------------------------------------------------------------------ built once per class
    def _once(self, what: str, make):
        key = (type(self), what)
        if key not in _CACHE:
            _CACHE[key] = make()
        return _CACHE[key]

    def dense(self) -> torch.nn.Module:
        def make():
            model = build(self.model_type, config=self.make_config())
            randomize(model)
            assert torch.isfinite(logits(model, self.ids())).all(), "randomized weights overflow"
            return model

        return copy.deepcopy(self._once("dense", make))

    def graph(self) -> prunekit.DependencyGraph:
        """The trace of :meth:`dense` (the copies share its parameter names and shapes)."""
        return self._once("graph", lambda: prunekit.trace(self.dense()))

    def dense_config(self):
        return self._once("config", self.make_config)

    def ids(self, n: int = 2, length: int = 7, seed: int = 1) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.randint(3, vocab_size(self.dense_config()), (n, length), generator=gen)

    def structured(self) -> tuple[torch.nn.Module, dict[str, tuple[int, ...]]]:
        """The dense model after ``wanda-sp`` at 30 % (and the parameter shapes before it)."""

        def make():
            model = self.dense()
            before = {k: tuple(p.shape) for k, p in model.named_parameters()}
            calibration = self.ids(n=4, length=16, seed=2)
            prunekit.prune(
                model, method="wanda-sp", sparsity=SPARSITY, structure="structured", calibration=calibration
            )
            return model, before

        model, before = self._once("structured", make)
        return copy.deepcopy(model), before

    def unstructured(self) -> torch.nn.Module:
        def make():
            model = self.dense()
            prunekit.prune(model, method="magnitude", sparsity=0.5)
            return model

        return copy.deepcopy(self._once("unstructured", make))

    # ------------------------------------------------------------------ (a)
    def test_removal_equals_soft_zeroing(self):
        model, graph = self.dense(), self.graph()
        # whole experts re-route tokens: (f) compares them with routing that never picks them
        groups = [g for g in graph.groups if not g.norm_spanned and g.kind != "experts"]
        assert groups, f"{self.model_type}: the trace found no group that no normalization spans"
        rng, ids = random.Random(0), self.ids()
        decisions = [random_decision(rng, gs, model) for gs in ties_together(groups)]
        decisions.append(random_decision(rng, groups, model))
        for decision in decisions:
            hard, soft = copy.deepcopy(model), copy.deepcopy(model)
            prunekit.soft_zero(soft, decision, shapes=graph.param_shapes)
            assert prunekit.remove(hard, decision, shapes=graph.param_shapes), "nothing was removed"
            what = ", ".join(f"{g.name} ({g.role}): {len(u)}/{g.num_units}" for g, u in decision)
            torch.testing.assert_close(logits(hard, ids), logits(soft, ids), atol=ATOL, rtol=RTOL, msg=what)

    # ------------------------------------------------------------------ (b)
    def test_structured_prune_removes_the_share_of_every_default_kind(self, record_property):
        roles = default_roles(self.dense_config(), self.dense())
        targeted = [g for g in self.graph().groups if g.role in roles]
        kinds = sorted({g.role for g in targeted})
        record_property("structured_kinds", ",".join(kinds))
        assert kinds == sorted(roles), f"default roles {roles}, traced groups with roles {kinds}"
        model, before = self.structured()
        dense, wrong = self.dense(), []
        adapter = get_adapter(dense)
        for g in targeted:
            removed = removed_units(g, before, model, targeted)
            # a family that runs only equal KV groups removes heads num_outer at a time; experts keep a
            # multiple of their kernel's alignment
            grouped = bool(g.num_outer) and g.num_outer != g.num_units
            step = g.num_outer if grouped and not adapter.runs_uneven_groups(dense, g) else g.kept_multiple
            if abs(removed - SPARSITY * g.num_units) > step:
                wrong.append(f"{g.name} ({g.role}): {removed:g} of {g.num_units} removed")
        assert not wrong, f"expected {SPARSITY:.0%} of each group's units within one step: " + "; ".join(
            wrong
        )

    # ------------------------------------------------------------------ (c)
    def test_pruned_model_generates_with_cache_as_without(self):
        model, _ = self.structured()
        ids, steps = self.ids(), 4
        kw = dict(
            attention_mask=torch.ones_like(ids),  # explicit: prompt tokens equal to pad_token_id stay visible
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            pad_token_id=0,
            output_logits=True,
            return_dict_in_generate=True,
        )
        cached = model.generate(ids, use_cache=True, **kw)
        full = model.generate(ids, use_cache=False, **kw)
        assert cached.sequences.shape == (ids.shape[0], ids.shape[1] + steps)
        assert torch.equal(cached.sequences, full.sequences)
        for step, (a, b) in enumerate(zip(cached.logits, full.logits)):
            torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL, msg=f"step {step}")

    # ------------------------------------------------------------------ (d)
    @pytest.mark.parametrize("structure", ["unstructured", "structured"])
    def test_save_and_reload_is_bit_identical(self, structure, tmp_path):
        model = self.unstructured() if structure == "unstructured" else self.structured()[0]
        again = prunekit.from_pretrained(prunekit.save_pretrained(model, tmp_path / structure))
        saved, loaded = model.state_dict(), again.state_dict()
        assert saved.keys() == loaded.keys()
        changed = [
            k for k in saved if saved[k].shape != loaded[k].shape or not torch.equal(saved[k], loaded[k])
        ]
        assert not changed, f"tensors differ after reloading: {changed}"
        ids = self.ids()
        assert torch.equal(logits(model, ids), logits(again.eval(), ids))

    # ------------------------------------------------------------------ (e)
    def test_default_roles_are_traced(self):
        roles = default_roles(self.dense_config(), self.dense())
        traced = {g.role for g in self.graph().groups}
        assert roles, f"the {self.model_type} adapter names no default structured roles"
        assert set(roles) <= traced, f"default roles {roles}; the trace found only {sorted(traced)}"

    # ------------------------------------------------------------------ (f)
    def test_expert_removal_equals_routing_around_them(self, tmp_path):
        """Whole experts removed = the dense model routing with their logits at minus infinity; the
        router has no output for them, and the pruned model generates and reloads."""
        model, graph = self.dense(), self.graph()
        whole = [g for g in graph.groups if g.kind == "experts"]
        if not whole:
            pytest.skip(f"{self.model_type} has no whole-expert groups")
        rng, ids = random.Random(0), self.ids()
        decision = [
            (g, sorted(rng.sample(range(g.num_units), g.num_units - max(1, g.min_kept)))) for g in whole
        ]
        hard = copy.deepcopy(model)
        prunekit.remove(hard, decision, shapes=graph.param_shapes)
        with routed_around(model, decision) as masked:
            expected = logits(model, ids)
        assert masked, "the routers' logits were never computed through F.linear: nothing was masked"
        torch.testing.assert_close(logits(hard, ids), expected, atol=ATOL, rtol=RTOL)
        for g, units in decision:
            router = next(m for m in g.members if m.side == "out")
            assert hard.get_parameter(router.param).shape[0] == g.num_units - len(units)
        again = prunekit.from_pretrained(prunekit.save_pretrained(hard, tmp_path / "experts"))
        assert torch.equal(logits(again.eval(), ids), logits(hard, ids))
        out = hard.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
        assert out.shape == (ids.shape[0], ids.shape[1] + 3)


@contextlib.contextmanager
def routed_around(model: torch.nn.Module, decision):
    """Route as if the decision's experts had logits of minus infinity: every ``F.linear`` with a router
    weight gets those outputs masked (yields the list of masked calls)."""
    routers = {}
    for group, units in decision:
        for m in group.members:
            if m.side == "out":
                routers[id(model.get_parameter(m.param))] = torch.tensor(sorted(units))
    linear, masked = torch.nn.functional.linear, []

    def masking(x, weight, bias=None):
        out = linear(x, weight, bias)
        units = routers.get(id(weight))
        if units is not None:
            masked.append(units)
            out = out.index_fill(-1, units.to(out.device), float("-inf"))
        return out

    torch.nn.functional.linear = masking
    try:
        yield masked
    finally:
        torch.nn.functional.linear = linear
