"""Typed calibration statistics: accumulation, rank sums, scorer requirements, OWL through the registry."""

from __future__ import annotations

import pytest
import torch
from conftest import examples, make_tiny_llama
from hypothesis import given, settings
from hypothesis import strategies as st

import prunekit
from prunekit.engine.gradients import model_statistics
from prunekit.engine.stats import StatsCollector
from prunekit.engine.unstructured import owl_allocation
from prunekit.methods.allocation import OWL, outlier_ratio, owl_sparsities
from prunekit.methods.scorers import SCORERS, Scorer, get_scorer, register_scorer
from prunekit.methods.scorers.flap import FLAP
from prunekit.methods.statistics import (
    Accumulator,
    GradientNorms,
    GradientSums,
    Hessian,
    MeanVar,
    ModuleStats,
    Moments,
    Scope,
    SquaredNorms,
    Statistic,
    activation_norms,
    of_scope,
    ordered,
    pooled,
)

BLOCK = [SquaredNorms(), Hessian(), Moments()]
MODEL = [GradientNorms(scale=3.0), GradientSums()]


def _flat(value) -> list[torch.Tensor]:
    return [value.mean, value.var] if isinstance(value, MeanVar) else [value]


def _one_pass(statistic: Statistic, batches: list[torch.Tensor]) -> Accumulator:
    acc = Accumulator(statistic)
    for b in batches:
        acc.add(b)
    return acc


def _two_halves(statistic: Statistic, batches: list[torch.Tensor], cut: int) -> list[torch.Tensor]:
    """Each half accumulated on its own "rank", then the declared tensors summed as all_reduce_ does."""
    first, second = _one_pass(statistic, batches[:cut]), _one_pass(statistic, batches[cut:])
    for mine, theirs in zip(first.tensors(), second.tensors()):
        mine += theirs
    return first.tensors()


integer_batches = st.integers(1, 6).flatmap(
    lambda features: st.lists(
        st.lists(st.lists(st.integers(-8, 8), min_size=features, max_size=features), min_size=1, max_size=5),
        min_size=2,
        max_size=6,
    )
)


# ----------------------------------------------------------------------------------- split calibration sets
@settings(max_examples=examples(40), deadline=None)
@given(rows=integer_batches, data=st.data())
def test_two_halves_reduced_by_their_declared_tensors_equal_one_pass(rows, data):
    """Integer inputs make every sum exact, so all statistics (fp32 XᵀX too) must agree bit for bit."""
    batches = [torch.tensor(b, dtype=torch.float32) for b in rows]
    cut = data.draw(st.integers(1, len(batches) - 1))
    tokens = sum(len(b) for b in batches)
    grads = [b.sum(0) for b in batches]  # one same-shaped "gradient" per sequence for MODEL statistics
    for statistic in BLOCK + MODEL:
        inputs = batches if statistic.scope is Scope.BLOCK else grads
        whole = _one_pass(statistic, inputs)
        halves = _two_halves(statistic, inputs, cut)
        assert len(halves) == len(whole.tensors())
        split = statistic.finalise(halves, tokens)
        for got, want in zip(_flat(split), _flat(whole.result(tokens))):
            assert got.dtype == want.dtype and torch.equal(got, want), statistic


@pytest.mark.parametrize("statistic", BLOCK, ids=repr)
def test_float_halves_match_one_pass_and_the_definition(statistic):
    """fp64 per-feature sums give the same fp32 value in any order; fp32 XᵀX matches to tolerance."""
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, 7, generator=g) * 3 + 1 for n in (5, 1, 9, 4)]
    x = torch.cat(batches)
    split = statistic.finalise(_two_halves(statistic, batches, 2), len(x))
    whole = _one_pass(statistic, batches).result(len(x))
    exact = not isinstance(statistic, Hessian)
    for got, want in zip(_flat(split), _flat(whole)):
        if exact:
            assert torch.equal(got, want)
        else:
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)
    expected = {
        SquaredNorms: [(x.double() ** 2).sum(0).float()],
        Hessian: [2 * x.t() @ x / len(x)],
        Moments: [x.double().mean(0).float(), x.double().var(0, unbiased=False).float()],
    }[type(statistic)]
    for got, want in zip(_flat(whole), expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_variance_is_clamped_at_zero_for_constant_inputs():
    x = torch.full((6, 3), 0.1)
    value = _one_pass(Moments(), [x[:2], x[2:]]).result(6)
    assert bool((value.var >= 0).all())
    torch.testing.assert_close(value.mean, torch.full((3,), 0.1))


def test_gradient_statistics_accumulate_per_sequence_gradients():
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(4, 3, generator=g) for _ in range(5)]
    norms = _one_pass(GradientNorms(scale=3.0), grads).result(5)
    sums = _one_pass(GradientSums(), grads).result(5)
    torch.testing.assert_close(norms, sum((3.0 * d) ** 2 for d in grads).sqrt())
    torch.testing.assert_close(sums, sum(grads))


def test_nothing_added_finalises_to_nothing():
    acc = Accumulator(SquaredNorms())
    assert acc.tensors() == [] and acc.result(0) is None


# ------------------------------------------------------------------------------------- scopes and results
def test_each_statistic_declares_how_it_is_gathered():
    assert {s.scope for s in BLOCK} == {Scope.BLOCK}
    assert {s.scope for s in MODEL} == {Scope.MODEL}
    both = frozenset(BLOCK + MODEL)
    assert of_scope(both, Scope.BLOCK) == frozenset(BLOCK)
    assert of_scope(both, Scope.MODEL) == frozenset(MODEL)
    assert ordered(reversed(BLOCK + MODEL)) == ordered(BLOCK + MODEL)  # the same order on every rank
    assert GradientNorms(scale=3.0) != GradientNorms(scale=4.0) and SquaredNorms() != Hessian()


def test_the_collector_gathers_only_what_is_declared_with_counts():
    layer = torch.nn.Linear(5, 2)
    x = torch.randn(3, 4, 5)
    with StatsCollector({"l": layer}, {SquaredNorms(), GradientSums()}) as collector:
        layer(x)
        layer(x[:1])
    stats = collector.stats()["l"]
    assert set(stats) == {SquaredNorms}  # full-model statistics are not the hooks' business
    assert (stats.n_tokens, stats.n_samples) == (16, 4)
    flat = torch.cat([x, x[:1]]).reshape(-1, 5)
    torch.testing.assert_close(stats[SquaredNorms], (flat.double() ** 2).sum(0).float())


def test_conv_features_are_channels_and_broadcast_over_rows():
    conv = torch.nn.Conv1d(4, 4, 3, groups=4)
    x = torch.randn(2, 4, 6)
    with StatsCollector({"c": conv}, {SquaredNorms(), Moments()}) as collector:
        conv(x)
    stats = collector.stats()["c"]
    torch.testing.assert_close(stats[SquaredNorms], (x.double() ** 2).sum((0, 2)).float())
    rows = stats.for_matrix(features_on_rows=True)
    cols = stats.for_matrix(features_on_rows=False)
    assert rows[SquaredNorms].shape == (4, 1) and rows[Moments].var.shape == (4, 1)
    assert cols[SquaredNorms].shape == (1, 4) and cols[Moments].mean.shape == (1, 4)
    assert rows.n_samples == stats.n_samples == 2


def test_full_model_statistics_land_on_their_parameter():
    stats = ModuleStats({SquaredNorms: torch.ones(3)}, n_tokens=4, n_samples=2)
    with_grads = stats.with_params("weight", {GradientSums: torch.zeros(2, 3)}).with_params(
        "bias", {GradientSums: torch.ones(2)}
    )
    assert with_grads.param(GradientSums, "bias").shape == (2,)
    assert with_grads.param(GradientSums, "weight").shape == (2, 3)
    assert with_grads.param(GradientNorms, "weight") is None
    assert with_grads[SquaredNorms] is stats[SquaredNorms] and with_grads.n_tokens == 4
    assert GradientSums not in stats  # copies: the original is unchanged


def test_full_model_runner_gives_every_declared_statistic_of_every_parameter():
    model = make_tiny_llama(seed=2)
    ids = torch.randint(2, 64, (3, 8), generator=torch.Generator().manual_seed(0))
    weight = model.model.layers[0].mlp.down_proj.weight
    out = model_statistics(
        model, ids, {"down": weight}, {GradientNorms(scale=2.0), GradientSums(), Hessian()}
    )
    assert set(out["down"]) == {GradientNorms, GradientSums}
    assert out["down"][GradientSums].shape == weight.shape
    assert model_statistics(model, ids, {"down": weight}, {Hessian()}) == {}
    assert all(p.grad is None for p in model.parameters())


@settings(max_examples=examples(25), deadline=None)
@given(sizes=st.lists(st.integers(1, 6), min_size=1, max_size=4), seed=st.integers(0, 2**16))
def test_pooled_moments_are_the_moments_of_the_union(sizes, seed):
    g = torch.Generator().manual_seed(seed)
    parts = [torch.randn(n, 3, generator=g).double() for n in sizes]
    stats = [ModuleStats({Moments: _one_pass(Moments(), [p]).result(len(p))}, n_tokens=len(p)) for p in parts]
    union = torch.cat(parts)
    pool = pooled(stats)
    assert pool.n_tokens == len(union)
    torch.testing.assert_close(pool[Moments].mean, union.mean(0).float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pool[Moments].var, union.var(0, unbiased=False).float(), rtol=1e-5, atol=1e-6)
    assert pooled([ModuleStats({SquaredNorms: torch.ones(3)}, n_tokens=2)]) is None  # not poolable


# -------------------------------------------------------------------------------------- scorer requirements
def test_flap_requirements_follow_its_metric_per_instance():
    assert get_scorer("flap", metric="WIFN").requires == {SquaredNorms()}
    assert get_scorer("flap", metric="WIFV").requires == {Moments()}
    assert get_scorer("flap", metric="IFV").requires == {Moments()}
    assert get_scorer("flap").requires == {Moments()}  # the default metric is WIFV
    assert "requires" not in vars(FLAP) and "requires" not in vars(Scorer)  # never a class attribute


def test_gblm_scale_lands_in_its_gradient_statistic():
    (grad,) = of_scope(get_scorer("gblm", scale=7.0).requires, Scope.MODEL)
    assert grad == GradientNorms(scale=7.0)
    assert GradientNorms(scale=100.0) in get_scorer("gblm").requires
    assert SquaredNorms() in get_scorer("gblm").requires


def test_every_registered_scorer_declares_statistic_instances():
    for name, cls in SCORERS.items():
        requires = cls().requires
        assert isinstance(requires, frozenset) and all(isinstance(s, Statistic) for s in requires), name
    assert get_scorer("magnitude").requires == frozenset()
    assert get_scorer("taylor").requires == {GradientSums()}
    assert get_scorer("sparsegpt").requires == {Hessian()}


def test_recipe_stages_read_the_requirements_of_their_configured_scorer():
    from prunekit.recipes import parse_recipe

    options = "{metric: WIFN, bias_compensation: false}"
    text = f"stages:\n  - method: flap\n    sparsity: 0.2\n    options: {options}\n"
    stage = parse_recipe(text).stages[0]
    assert stage.spec.scorer().requires == {SquaredNorms()}
    assert stage.needs_calibration()


def test_wanda_scores_use_the_per_sequence_norms():
    w = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    stats = ModuleStats({SquaredNorms: torch.tensor([[4.0, 16.0]])}, n_tokens=8, n_samples=4)
    torch.testing.assert_close(activation_norms(stats), torch.tensor([[1.0, 2.0]]))
    torch.testing.assert_close(
        get_scorer("wanda").weight_scores(w, stats), w.abs() * torch.tensor([[1.0, 2.0]])
    )


# --------------------------------------------------------------------------------------------------- OWL
@pytest.fixture
def hessian_owl_scorer():
    """A custom scorer that ranks like Wanda (so its OWL allocation must match) but reads only the Hessian:
    |W_ij| · sqrt(diag(H)_j), and diag(H) = 2 ||X_j||² / n, a constant factor away from Wanda's norms."""

    @register_scorer
    class DiagonalHessian(Scorer):
        name = "test-diagonal-hessian"

        def statistics(self):
            return (Hessian(),)

        def weight_scores(self, weight, stats=None):
            return weight.detach().abs().float() * torch.diagonal(stats[Hessian]).sqrt().reshape(1, -1)

    yield DiagonalHessian.name
    del SCORERS[DiagonalHessian.name]


def _owl_inputs(model):
    blocks = list(model.model.layers)
    inside = [
        {n: m for n, m in model.named_modules() if n.startswith(f"model.layers.{i}.") and n.endswith("proj")}
        for i in range(len(blocks))
    ]
    return blocks, inside


def test_owl_allocates_with_a_custom_registered_scorer(hessian_owl_scorer):
    model = make_tiny_llama(seed=4)
    ids = torch.randint(2, 64, (6, 16), generator=torch.Generator().manual_seed(0))
    blocks, inside = _owl_inputs(model)
    wanda = owl_allocation(model, blocks, inside, ids, 0.6, OWL(lam=0.1))
    custom = owl_allocation(
        model, blocks, inside, ids, 0.6, OWL(lam=0.1, scorer=hessian_owl_scorer, requires=frozenset())
    )
    assert set(custom) == set(wanda) == {0, 1}
    for i in wanda:
        assert custom[i] == pytest.approx(wanda[i], abs=1e-6)
    sizes = [sum(m.weight.numel() for m in inside[i].values()) for i in (0, 1)]
    mean = sum(custom[i] * sizes[i] for i in (0, 1)) / sum(sizes)
    assert mean == pytest.approx(0.6, abs=1e-9)


def test_owl_default_matches_the_prune_call():
    model = make_tiny_llama(seed=4)
    ids = torch.randint(2, 64, (6, 16), generator=torch.Generator().manual_seed(0))
    blocks, inside = _owl_inputs(model)
    direct = owl_allocation(model, blocks, inside, ids, 0.6, OWL(lam=0.1))
    report = prunekit.prune(
        model, method="wanda", sparsity=0.6, calibration=ids, allocation="owl", owl_lambda=0.1
    )
    assert report.block_sparsity == direct


def test_owl_refuses_a_scorer_that_needs_full_model_gradients():
    model = make_tiny_llama(seed=4)
    blocks, inside = _owl_inputs(model)
    with pytest.raises(ValueError, match="full-model"):
        owl_allocation(model, blocks, inside, torch.randint(2, 64, (2, 8)), 0.5, OWL(scorer="gblm"))


def test_owl_turns_block_scores_and_sizes_into_sparsities():
    owl = OWL(lam=0.1, m=2.0)
    spiky, flat = [torch.tensor([1.0, 1.0, 1.0, 50.0])], [torch.ones(4)]
    ratios = {0: owl.outliers(spiky), 1: owl.outliers(flat), 2: owl.outliers([])}
    assert ratios == {0: outlier_ratio(spiky, 2.0), 1: 0.0, 2: 0.0}
    alloc = owl.sparsities(ratios, {0: 100, 1: 300, 2: 0}, 0.5)
    assert set(alloc) == {0, 1}  # a block without targeted weights gets no sparsity
    assert alloc[0] < alloc[1]  # more outliers, lower sparsity
    assert list(alloc.values()) == owl_sparsities([ratios[0], ratios[1]], [100, 300], 0.5, 0.1)


def test_a_scorer_that_declares_the_old_string_needs_is_refused_by_name():
    from prunekit.methods.scorers import Scorer, register_scorer

    class Old(Scorer):
        name = "old-style-needs"
        needs = frozenset({"sq_norm"})

    with pytest.raises(TypeError, match="declares `needs`"):
        register_scorer(Old)
