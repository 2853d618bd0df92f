"""Every causal-LM family transformers registers: classified, built small, and supported or refused.

- every mapping type is in exactly one of ``FAMILIES`` and ``EXCLUDED`` (a new transformers release that
  adds one fails here, asking for it to be classified), and each exclusion's reason holds;
- every buildable type builds below a million parameters, runs a forward quickly and is causal;
- ``support(config)`` either supports it (it is then in the conformance run) or names it and what is
  missing, and then a structured ``prunekit.prune`` raises ``UnsupportedFamilyError`` naming it and
  leaves every parameter bit-identical;
- unstructured magnitude pruning at 50 % either zeroes about half of every block's matrices or is
  refused the same way (never an IndexError, never a silent 0 %);
- the table in docs/adapters.md is what ``tests/make_family_table.py`` writes now.

One process, each model built once (145 tiny models): the file takes about 30 s on one core.
"""

from __future__ import annotations

import copy
import functools
import time

import pytest
import torch
from family_configs import (
    EXCLUDED,
    EXCLUSION_CHECKS,
    FAMILIES,
    MOE_VARIANTS,
    attends_ahead,
    build,
    generic_kwargs,
    mapping_types,
    tiny_config,
    vocab_size,
)
from family_support import UnsupportedFamilyError, support
from test_conformance_families import CONFORMANCE_TYPES

import prunekit

pytestmark = pytest.mark.usefixtures("one_thread")

BUILDABLE = [t for t in mapping_types() if t in FAMILIES]
MAX_PARAMS = 1_000_000


@functools.cache
def _model(model_type: str) -> torch.nn.Module:
    """Built once per type; tests that change it take a deep copy."""
    return build(model_type)


@functools.cache
def _support(model_type: str):
    return support(tiny_config(model_type))


REFUSED = [t for t in BUILDABLE if not _support(t).supported]


def _ids(model_type: str, n: int = 2, length: int = 8) -> torch.Tensor:
    vocab = vocab_size(tiny_config(model_type))
    return torch.randint(3, vocab, (n, length), generator=torch.Generator().manual_seed(0))


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    now = model.state_dict()
    assert now.keys() == before.keys()
    changed = [k for k, v in before.items() if now[k].shape != v.shape or not torch.equal(now[k], v)]
    assert not changed, f"changed by a refused call: {changed}"


# ------------------------------------------------------------------------------------ classification
def test_every_mapping_type_is_classified_exactly_once():
    import transformers

    types = mapping_types()
    unclassified = [t for t in types if t not in FAMILIES and t not in EXCLUDED]
    assert not unclassified, (
        f"transformers {transformers.__version__} registers causal-LM model types that "
        f"tests/family_configs.py does not classify: {unclassified}. Add each to FAMILIES (a decoder-only "
        "text family, with the overrides its tiny config needs) or to EXCLUDED (with the reason)."
    )
    both = sorted(set(FAMILIES) & set(EXCLUDED))
    assert not both, f"classified both as buildable and as excluded: {both}"
    stale = sorted((set(FAMILIES) | set(EXCLUDED)) - set(types))
    assert not stale, f"classified in tests/family_configs.py but no longer in transformers' mapping: {stale}"


@pytest.mark.parametrize("model_type", sorted(EXCLUDED))
def test_exclusion_reason_holds(model_type):
    check = EXCLUSION_CHECKS.get(model_type)
    assert check is not None, f"{model_type}: add a check of its exclusion reason to EXCLUSION_CHECKS"
    assert check(model_type), f"{model_type} no longer matches its exclusion: {EXCLUDED[model_type]}"


@pytest.mark.parametrize("model_type", BUILDABLE)
def test_tiny_model_is_small_fast_and_causal(model_type):
    model = _model(model_type)
    n = sum(p.numel() for p in model.parameters())
    assert n <= MAX_PARAMS, f"{model_type}: {n} parameters; shrink its tiny config"
    ids = _ids(model_type)
    start = time.perf_counter()
    with torch.no_grad():
        out = model(ids, use_cache=False).logits
    assert time.perf_counter() - start < 1.0, f"{model_type}: a forward of {tuple(ids.shape)} took over 1 s"
    assert out.shape[:2] == ids.shape and torch.isfinite(out).all()
    assert not attends_ahead(model, vocab_size(tiny_config(model_type))), (
        f"{model_type}: the first position's logits depend on later tokens: not a causal decoder"
    )


# ------------------------------------------------------------------------------------ support
@pytest.mark.parametrize("model_type", BUILDABLE)
def test_support_is_full_or_names_the_family(model_type):
    found = _support(model_type)
    assert found.model_type == model_type
    if found.supported:
        assert found.adapter, f"{model_type} is supported without a registered adapter"
        assert model_type in CONFORMANCE_TYPES, f"{model_type} is supported but not in the conformance run"
    else:
        assert isinstance(found.reason, str) and model_type in found.reason, (
            f"{model_type}: the reason must name the family and what is missing, got {found.reason!r}"
        )
        assert model_type not in CONFORMANCE_TYPES


@pytest.mark.parametrize("model_type", REFUSED)
def test_structured_prune_of_a_refused_family_raises_before_any_change(model_type):
    model = copy.deepcopy(_model(model_type))
    before = _state(model)
    with pytest.raises(UnsupportedFamilyError) as err:
        prunekit.prune(
            model,
            method="wanda-sp",
            sparsity=0.3,
            structure="structured",
            calibration=_ids(model_type, 4, 16),
        )
    assert model_type in str(err.value), f"the error does not name the family: {err.value}"
    _assert_unchanged(model, before)


@pytest.mark.parametrize("model_type", sorted(MOE_VARIANTS))
def test_a_supported_hybrid_with_experts_is_refused_before_any_change(model_type):
    """Its usual configs are in the conformance run; a config whose experts sit behind latent
    projections must not pass as supported (no part describes them), from the config alone and when
    pruned."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config = CONFIG_MAPPING[model_type](**{**generic_kwargs(model_type), **MOE_VARIANTS[model_type]})
    found = support(config)
    assert not found.supported and model_type in found.reason and "experts" in found.reason
    model = build(model_type, config=config)
    before = _state(model)
    with pytest.raises(UnsupportedFamilyError, match="experts"):
        prunekit.prune(model, method="wanda-sp", sparsity=0.3, structure="structured",
                       calibration=_ids(model_type, 4, 16))  # fmt: skip
    _assert_unchanged(model, before)


def _blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's blocks: the ModuleList of parameter-holding modules with the most parameters."""
    best, size = [], 0
    for mod in model.modules():
        if (
            isinstance(mod, torch.nn.ModuleList)
            and len(mod)
            and all(next(b.parameters(), None) is not None for b in mod)
        ):
            count = sum(p.numel() for p in mod.parameters())
            if count > size:
                best, size = list(mod), count
    return best


def _matrices(block: torch.nn.Module) -> list[torch.Tensor]:
    from transformers.pytorch_utils import Conv1D

    return [m.weight for m in block.modules() if isinstance(m, torch.nn.Linear | Conv1D)]


@pytest.mark.parametrize("model_type", BUILDABLE)
def test_unstructured_magnitude_prunes_half_of_every_block_or_is_refused(model_type):
    model = copy.deepcopy(_model(model_type))
    before = _state(model)
    try:
        prunekit.prune(model, method="magnitude", sparsity=0.5)
    except UnsupportedFamilyError as err:
        assert not _support(model_type).supported, f"{model_type} is supported, yet refused: {err}"
        assert model_type in str(err), f"the error does not name the family: {err}"
        _assert_unchanged(model, before)
        return
    blocks = _blocks(model)
    assert blocks, f"{model_type}: no blocks found"
    zero_at_init = {id(p): float((before[n] == 0).float().mean()) for n, p in model.named_parameters()}
    for i, block in enumerate(blocks):
        weights = _matrices(block)
        assert weights, f"{model_type} block {i}: no linear layers"
        for w in weights:  # half of every matrix, unless its initialisation already zeroed more
            want = max(0.5, zero_at_init[id(w)])
            got = float((w == 0).float().mean())
            assert abs(got - want) <= 0.05, (
                f"{model_type} block {i}: {got:.2f} of a {tuple(w.shape)} matrix is zero after 50 % "
                f"magnitude pruning ({zero_at_init[id(w)]:.2f} before)"
            )


# ------------------------------------------------------------------------------------ docs
def test_the_docs_table_is_current():
    import make_family_table as table

    text = table.DOC.read_text(encoding="utf-8")
    assert table.START in text and table.END in text, f"{table.DOC} lost its generated-section markers"
    assert table.current(text) == table.render(), (
        "the supported-families table in docs/adapters.md is stale: run python3 tests/make_family_table.py"
    )
