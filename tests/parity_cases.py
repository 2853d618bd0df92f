"""The cases of the refactor parity test (:mod:`test_parity`) and how to run one.

A case is a model family, a seed and the keyword arguments of one :func:`prunekit.prune` call. The
seed alone decides the model: its config (sizes drawn with ``random.Random(seed)`` from small sets),
its weights (``torch.manual_seed(seed)`` before construction) and its calibration ids. Cases that need
a property of the config (enough blocks for ``dense_blocks``, a dt rank of 4 for 2:4 on Mamba, ...)
take the first seed from a starting point whose config has it, so the list below is fixed by this
file alone.

Only the public API is used here (``prunekit.prune``, the report's public fields, transformers model
classes): the module layout behind ``prunekit`` is what the refactor moves around.

Keyword arguments are JSON (they are written to ``fixtures/parity/cases.json``); ``calibration`` is
named, not given: ``"ids"`` is the seed's ``[4, 16]`` token ids, ``{"a": "ids[:2]", "b": "ids[2:]"}``
splits them into two tasks.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from typing import Any

import torch

FAMILIES = ("llama", "mamba", "mamba2")
VOCAB = 32
CALIBRATION_SHAPE = (4, 16)


@dataclass(frozen=True)
class Case:
    id: str
    family: str
    seed: int
    kwargs: dict[str, Any] = field(hash=False)
    #: the current code refuses the call with a ValueError; its message is the expected outcome
    refused: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "family": self.family,
            "seed": self.seed,
            "kwargs": json.loads(json.dumps(self.kwargs)),
            "refused": self.refused,
        }


# ---------------------------------------------------------------------------------------------------
# models, calibration


def config_sizes(family: str, seed: int) -> dict[str, Any]:
    """The config fields drawn from ``seed`` (a few thousand parameters at most)."""
    r = random.Random(seed)
    if family == "llama":
        heads = r.choice([4, 6])
        return dict(
            hidden_size=4 * heads,
            num_attention_heads=heads,
            num_key_value_heads=r.choice([d for d in (1, 2, 3) if heads % d == 0]),
            head_dim=4,
            intermediate_size=r.choice([16, 20, 24, 32]),
            num_hidden_layers=r.choice([2, 3, 4]),
            tie_word_embeddings=r.random() < 0.5,
        )
    if family == "mamba":
        return dict(
            hidden_size=r.choice([8, 12, 16]),
            state_size=4,
            expand=2,
            conv_kernel=3,
            time_step_rank=r.choice([2, 3, 4]),
            num_hidden_layers=r.choice([2, 3, 4]),
            tie_word_embeddings=r.random() < 0.5,
        )
    if family == "mamba2":
        hidden = r.choice([8, 12, 16])
        heads = 2 * hidden // 4  # expand 2, head_dim 4
        return dict(
            hidden_size=hidden,
            state_size=4,
            expand=2,
            head_dim=4,
            num_heads=heads,
            n_groups=r.choice([d for d in (1, 2, 3) if heads % d == 0]),
            conv_kernel=3,
            chunk_size=8,
            num_hidden_layers=r.choice([2, 3, 4]),
            tie_word_embeddings=r.random() < 0.5,
        )
    raise ValueError(f"unknown family {family!r}")


def build_model(family: str, seed: int) -> torch.nn.Module:
    """The case's dense model, in eval mode."""
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Mamba2Config,
        Mamba2ForCausalLM,
        MambaConfig,
        MambaForCausalLM,
    )

    sizes = config_sizes(family, seed)
    if family == "llama":
        config = LlamaConfig(vocab_size=VOCAB, max_position_embeddings=32, **sizes)
        cls = LlamaForCausalLM
    elif family == "mamba":
        config, cls = MambaConfig(vocab_size=VOCAB, **sizes), MambaForCausalLM
    else:
        config, cls = Mamba2Config(vocab_size=VOCAB, **sizes), Mamba2ForCausalLM
    torch.manual_seed(seed)
    return cls(config).eval()


def calibration_ids(seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, CALIBRATION_SHAPE, generator=torch.Generator().manual_seed(seed))


def _calibration(spec: Any, ids: torch.Tensor) -> Any:
    if isinstance(spec, dict):
        return {task: _calibration(s, ids) for task, s in spec.items()}
    return {"ids": ids, "ids[:2]": ids[:2], "ids[2:]": ids[2:]}[spec]


def prune_kwargs(case: Case) -> dict[str, Any]:
    """The case's keyword arguments with the calibration spelled out."""
    kwargs = dict(case.kwargs)
    if "calibration" in kwargs:
        kwargs["calibration"] = _calibration(kwargs["calibration"], calibration_ids(case.seed))
    return kwargs


# ---------------------------------------------------------------------------------------------------
# what a run leaves behind


def float_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every float parameter and buffer by name (tied tensors once), detached copies."""
    named = [*model.named_parameters(), *model.named_buffers()]
    return {name: t.detach().clone().contiguous() for name, t in named if t.is_floating_point()}


def logits(model: torch.nn.Module, seed: int) -> torch.Tensor:
    """The pruned model's last-position logits on the calibration sequences ``[4, vocab]``: they see
    every token, and catch forward-path changes that the weights alone do not show (the attention
    function of uneven GQA groups, per-layer sizes read from the config)."""
    with torch.no_grad():
        return model(calibration_ids(seed)).logits[:, -1].detach().clone().contiguous()


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=repr))


def config_changes(before: dict[str, Any], model: torch.nn.Module) -> dict[str, Any]:
    """Config fields the prune call added or changed (per-layer sizes, added biases, ...)."""
    after = _jsonable(model.config.to_dict())
    before = _jsonable(before)
    if isinstance(after.get("prunekit_layers"), list):  # per part kind since the fixtures: compare flat
        after["prunekit_layers"] = [_flat(record) for record in after["prunekit_layers"]]
    return {k: v for k, v in sorted(after.items()) if before.get(k, "<absent>") != v}


def _flat(record: dict[str, Any]) -> dict[str, Any]:
    """``{kind: {size: value}}`` as one ``{size: value}`` dict (the fixtures' format)."""
    out: dict[str, Any] = {}
    for sizes in record.values():
        clash = set(out) & set(sizes)
        assert not clash, f"part kinds share size names {clash}"
        out.update(sizes)
    return out


@dataclass
class Dense:
    """What the dense model looked like: its config and float tensor shapes."""

    config: dict[str, Any]
    shapes: dict[str, list[int]]


def shape_changes(dense: Dense, model: torch.nn.Module) -> dict[str, Any]:
    """Float tensors the call reshaped or created (``name: shape``) or dropped (``name: None``); every
    other shape is the dense model's, and the fixture holds them all."""
    after = {name: list(t.shape) for name, t in float_state(model).items()}
    changed: dict[str, Any] = {n: s for n, s in after.items() if dense.shapes.get(n) != s}
    changed.update({n: None for n in dense.shapes if n not in after})
    return dict(sorted(changed.items()))


def summary(report, model: torch.nn.Module, dense: Dense) -> dict[str, Any]:
    """The public outcome of a prune call, as JSON: the report's fields (``to_dict`` without the
    timing and the per-matrix sparsities its masks give), the skipped groups and compensated layers,
    the tensors reshaped and the config fields the call wrote. (Mask names and every shape are in the
    fixture's tensors.)"""
    record = report.to_dict()
    record.pop("seconds")
    record.pop("layer_sparsity")  # derived from the masks, which the fixture's tensors hold
    record["skipped"] = list(report.skipped)
    record["compensated"] = list(report.compensated)
    record["shape_changes"] = shape_changes(dense, model)
    record["config_changes"] = config_changes(dense.config, model)
    return _jsonable(record)


def run_case(case: Case):
    """Build the case's model and prune it: ``(model, report, dense)``; errors propagate."""
    import prunekit

    model = build_model(case.family, case.seed)
    dense = Dense(model.config.to_dict(), {n: list(t.shape) for n, t in float_state(model).items()})
    report = prunekit.prune(model, **prune_kwargs(case))
    return model, report, dense


def assert_same_summary(actual: Any, expected: Any, where: str = "summary") -> None:
    """Equal JSON trees, floats within rtol 1e-5 / atol 1e-6 (the tolerance of the parameters)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: {actual!r} is not a dict"
        assert sorted(actual) == sorted(expected), f"{where}: keys {sorted(actual)} != {sorted(expected)}"
        for key in expected:
            assert_same_summary(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), (
            f"{where}: {actual!r} != {expected!r}"
        )
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same_summary(a, e, f"{where}[{i}]")
    elif isinstance(expected, float) and not isinstance(actual, bool) and isinstance(actual, (int, float)):
        ok = math.isclose(actual, expected, rel_tol=1e-5, abs_tol=1e-6) or actual == expected
        assert ok, f"{where}: {actual!r} != {expected!r}"
    else:
        assert actual == expected and type(actual) is type(expected), f"{where}: {actual!r} != {expected!r}"


# ---------------------------------------------------------------------------------------------------
# the grid


def seed_where(family: str, start: int, **need: Any) -> int:
    """The first seed from ``start`` whose config (:func:`config_sizes`) has every ``need``:
    ``field=value``, or with a ``min_`` / ``max_`` prefix a bound (``min_num_key_value_heads=2``)."""

    def fits(sizes: dict[str, Any]) -> bool:
        for key, want in need.items():
            if key.startswith("min_") and sizes[key[4:]] < want:
                return False
            if key.startswith("max_") and sizes[key[4:]] > want:
                return False
            if not key.startswith(("min_", "max_")) and sizes[key] != want:
                return False
        return True

    for seed in range(start, start + 10_000):
        if fits(config_sizes(family, seed)):
            return seed
    raise ValueError(f"no {family} seed from {start} has {need}")


CAL = "ids"
ST = "structured"


#: what a case's config has unless it asks otherwise: depth and width matter only to some options, and
#: they are most of a fixture's size
DEFAULT_NEED = {
    "llama": {"num_hidden_layers": 2, "hidden_size": 16},
    "mamba": {"num_hidden_layers": 2, "max_hidden_size": 12},
    "mamba2": {"num_hidden_layers": 2},
}


class _Grid:
    """Collects one family's cases; each takes the first seed from its own starting point whose config
    meets the family's :data:`DEFAULT_NEED` updated with the case's own ``need``."""

    def __init__(self, family: str, base: int) -> None:
        self.family, self.base, self.cases = family, base, []

    def add(self, name: str, refused: bool = False, need: dict[str, Any] | None = None, **kwargs) -> None:
        full = {**DEFAULT_NEED[self.family], **(need or {})}
        seed = seed_where(self.family, self.base + 7 * len(self.cases), **full)
        self.cases.append(Case(f"{self.family}-{name}", self.family, seed, kwargs, refused))


DEEP = {"num_hidden_layers": 3}  # sequential calibration through two pruned blocks, owl, dense_blocks
FOUR = {"num_hidden_layers": 4}  # logistic schedules with a protected first and last block
WIDE = {"hidden_size": 24}  # Llama: 6 heads, in 1, 2 or 3 KV groups
GQA = {"hidden_size": 24, "min_num_key_value_heads": 2}


def _unstructured(family: str, base: int) -> list[Case]:
    """Unstructured and N:M cases: every method on every family, both granularities, both calibration
    modes of the calibrated ones."""
    g = _Grid(family, base)
    nm = {"time_step_rank": 4} if family == "mamba" else None  # 2:4 needs dt_proj's inputs in fours
    g.add("magnitude", method="magnitude", sparsity=0.5)
    g.add("magnitude-row", method="magnitude", sparsity=0.3, granularity="row")
    g.add("wanda", method="wanda", sparsity=0.5, calibration=CAL)
    g.add(
        "wanda-matrix-dense",
        method="wanda",
        sparsity=0.6,
        calibration=CAL,
        granularity="matrix",
        calibration_mode="dense",
    )
    g.add("sparsegpt", need=DEEP, method="sparsegpt", sparsity=0.5, calibration=CAL)
    g.add(
        "sparsegpt-row-dense",
        method="sparsegpt",
        sparsity=0.4,
        calibration=CAL,
        granularity="row",
        calibration_mode="dense",
    )
    g.add("gblm", method="gblm", sparsity=0.5, calibration=CAL)
    g.add("gblm-matrix", method="gblm", sparsity=0.5, calibration=CAL, granularity="matrix")
    g.add("magnitude-2of4", need=nm, method="magnitude", structure="2:4")
    g.add("wanda-2of4", need=nm, method="wanda", structure="2:4", calibration=CAL)
    g.add("sparsegpt-2of4", need=nm, method="sparsegpt", structure="2:4", calibration=CAL)
    g.add("wanda-owl", need=DEEP, method="wanda", sparsity=0.7, calibration=CAL, allocation="owl")
    if family == "llama":
        # recorded with allocation="owl", owl_lambda=0.2, which N:M ignored then and refuses now
        g.add(
            "wanda-2of4-dense",
            need=DEEP,
            method="wanda",
            structure="2:4",
            calibration=CAL,
            calibration_mode="dense",
        )
        g.add("wanda-alpha", method="wanda", sparsity=0.5, calibration=CAL, alpha_search=True)
        g.add("sparsegpt-blocksize", method="sparsegpt", sparsity=0.5, calibration=CAL, blocksize=8, damp=0.1)
        g.add(
            "magnitude-targets", method="magnitude", sparsity=0.5, targets="re:.*mlp\\..*", ignore="up_proj"
        )
    if family == "mamba":
        g.add(
            "magnitude-2of4-dt-rank",
            refused=True,
            need={"time_step_rank": 2},
            method="magnitude",
            structure="2:4",
        )
    return g.cases


def _structured(family: str, base: int) -> list[Case]:
    """Structured cases: every structured method, search, GQA policy, mode and compensation option."""
    g = _Grid(family, base)
    s = 0.5 if family == "mamba2" else 0.25  # Mamba-2: few heads per B/C group
    wide = WIDE if family == "llama" else {}
    g.add("magnitude-st", need=wide or None, method="magnitude", sparsity=s, structure=ST)
    g.add("magnitude-sp-round", method="magnitude-sp", sparsity=max(s, 0.3), structure=ST, round_to=4)
    g.add("wanda-sp", method="wanda-sp", sparsity=s, calibration=CAL)
    g.add("wanda-sp-dense", method="wanda-sp", sparsity=s, calibration=CAL, calibration_mode="dense")
    g.add(
        "wanda-sp-global",
        need=wide or None,
        method="wanda-sp",
        sparsity=s,
        calibration=CAL,
        structure_search="global",
    )
    if family != "mamba2":  # Mamba-2 refits in flap-refit
        g.add("wanda-sp-refit", method="wanda-sp", sparsity=s, calibration=CAL, refit=True)
    g.add("wanda-sp-per-layer", method="wanda-sp", sparsity=s, calibration=CAL, layer_sparsity=[0.0, 0.5])
    g.add(
        "wanda-sp-dense-blocks",
        need=DEEP,
        method="wanda-sp",
        sparsity=0.25,
        calibration=CAL,
        dense_blocks=1 if family == "llama" else [1, 0],
    )
    g.add("flap", need=DEEP, method="flap", sparsity=s, calibration=CAL)  # global search, 3 blocks
    g.add("flap-nobias", method="flap", sparsity=s, calibration=CAL, bias_compensation=False)
    g.add("flap-refit", method="flap", sparsity=s, calibration=CAL, refit=True)
    g.add("flap-soft", method="flap", sparsity=s, calibration=CAL, mode="soft")
    g.add("taylor", method="taylor", sparsity=s, calibration=CAL)
    g.add("seap", need=DEEP, method="seap", sparsity=0.3, calibration=CAL, logistic={"first": 1, "last": 0})
    if family == "llama":
        g.add("magnitude-st-soft", method="magnitude", sparsity=s, mode="soft", structure=ST)
        g.add("wanda-sp-bias", method="wanda-sp", sparsity=s, calibration=CAL, bias_compensation=True)
        g.add(
            "magnitude-per-layer-mlp",
            method="magnitude",
            sparsity=s,
            structure=ST,
            layer_sparsity=[0.5],
            ignore="attention",
        )
        g.add("magnitude-st-groups", need=GQA, method="magnitude", sparsity=0.5, structure=ST, gqa="groups")
        g.add("flap-groups", need=GQA, method="flap", sparsity=0.5, calibration=CAL, gqa="groups")
        g.add(
            "taylor-global-groups",
            need=GQA,
            method="taylor",
            sparsity=0.3,
            calibration=CAL,
            gqa="groups",
            structure_search="global",
        )
        g.add(
            "seap-task",
            need=DEEP,
            method="seap",
            sparsity=0.2,
            logistic={"first": 0, "last": 1, "k": 2.0},
            calibration={"a": "ids[:2]", "b": "ids[2:]"},
            task="b",
        )
        g.add(
            "seap-blend",
            need=FOUR,
            method="seap",
            sparsity=0.2,
            logistic={"first": 1, "last": 1},
            calibration={"a": "ids[:2]", "b": "ids[2:]"},
            task_weights={"a": 2.0, "b": 1.0},
        )
        g.add("magnitude-residual", method="magnitude", sparsity=0.25, structure=ST, targets="residual")
        g.add(
            "wanda-sp-global-sequential",
            refused=True,
            method="wanda-sp",
            sparsity=0.25,
            calibration=CAL,
            structure_search="global",
            calibration_mode="sequential",
        )
    if family == "mamba":
        g.add("magnitude-dt-rank", method="magnitude", sparsity=0.5, structure=ST, targets="ssm_dt_rank")
        g.add("taylor-state", method="taylor", sparsity=0.5, calibration=CAL, targets="ssm_state")
        # the global search over groups of very different sizes (a 2 to 4 wide dt rank beside the inner
        # channels): sensitive to how scores are standardised across groups
        g.add(
            "magnitude-global-dt-rank",
            method="magnitude",
            sparsity=0.25,
            structure=ST,
            structure_search="global",
            targets=["ssm_inner", "ssm_dt_rank"],
        )
        g.add(
            "taylor-global-all",
            method="taylor",
            sparsity=0.25,
            calibration=CAL,
            structure_search="global",
            targets=["ssm_inner", "ssm_dt_rank", "ssm_state"],
        )
    if family == "mamba2":
        g.add(
            "magnitude-st-groups",
            need={"min_n_groups": 2},
            method="magnitude",
            sparsity=0.5,
            structure=ST,
            gqa="groups",
        )
        g.add("taylor-state", method="taylor", sparsity=0.5, calibration=CAL, targets="ssm_state")
        g.add(
            "wanda-sp-dense-blocks-too-deep",
            refused=True,
            need=DEEP,
            method="wanda-sp",
            sparsity=0.5,
            calibration=CAL,
            dense_blocks=1,
        )
    return g.cases


CASES: list[Case] = [case for f, b in zip(FAMILIES, (100, 200, 300)) for case in _unstructured(f, b)]
CASES += [case for f, b in zip(FAMILIES, (1100, 1200, 1300)) for case in _structured(f, b)]
