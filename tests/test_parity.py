"""Parity with the code before the pipeline refactor: every case prunes exactly as it did at 5d25b74.

The fixtures under ``tests/fixtures/parity/`` were written by ``tests/make_parity_fixtures.py`` from
commit 5d25b74 (the last commit before the refactor of prunekit's internals; ``cases.json`` records
the commit it was generated from). Each case of :mod:`parity_cases` (a family, a seed that fixes the
random tiny model and its calibration ids, and the keyword arguments of one :func:`prunekit.prune`
call) is run again on the current code, which must give the same parameter and buffer names and
shapes, the same masks bit for bit, the same parameter values and last-position logits (within a
float tolerance for other CPUs; on one machine they are bit-identical), the same public report fields
and config changes, and for the cases the code refuses, the same error message with the model left
untouched.

Only the public API is used (``prunekit.prune`` and the report), so the test survives modules moving.
A failure here means the refactor changed behaviour. Regenerating the fixtures is legitimate only
when a behaviour change is intended and stated (in the commit message, with the cases it changes);
never to make this test pass.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from parity_cases import (
    CASES,
    Case,
    assert_same_summary,
    build_model,
    float_state,
    logits,
    prune_kwargs,
    run_case,
    summary,
)
from safetensors.torch import load_file

import prunekit

pytestmark = pytest.mark.usefixtures("one_thread")

FIXTURES = Path(__file__).parent / "fixtures" / "parity"
RECORDED = json.loads((FIXTURES / "cases.json").read_text(encoding="utf-8"))
BY_ID = {record["id"]: record for record in RECORDED["cases"]}
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def recorded_tensors() -> dict[str, dict[str, torch.Tensor]]:
    """family -> case id -> {"params": {...}, "masks": {...}, "logits": tensor}."""
    out: dict[str, dict[str, dict]] = {}
    for family in {case.family for case in CASES}:
        per_case: dict[str, dict] = {}
        for key, value in load_file(str(FIXTURES / f"{family}.safetensors")).items():
            case_id, name = key.split("/", 1)
            entry = per_case.setdefault(case_id, {"params": {}, "masks": {}, "logits": None})
            if name == "logits":
                entry["logits"] = value
            elif name.startswith("mask/"):
                entry["masks"][name[len("mask/") :]] = value
            else:
                entry["params"][name] = value
        out[family] = per_case
    return out


def test_fixtures_are_of_these_cases(recorded_tensors):
    """The case list and the fixtures agree: same ids in order, same seeds and arguments (a changed case
    without regenerated fixtures, or fixtures of another case list, fail here and not case by case)."""
    assert [r["id"] for r in RECORDED["cases"]] == [c.id for c in CASES]
    for case in CASES:
        record = BY_ID[case.id]
        assert {k: record[k] for k in ("id", "family", "seed", "kwargs", "refused")} == case.as_json()
        assert ("error" in record) == case.refused and ("summary" in record) != case.refused
    stored = {case_id for per_case in recorded_tensors.values() for case_id in per_case}
    assert stored == {c.id for c in CASES if not c.refused}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_parity(case: Case, recorded_tensors):
    record = BY_ID[case.id]
    if case.refused:
        model = build_model(case.family, case.seed)
        before = float_state(model)
        with pytest.raises(ValueError) as info:
            prunekit.prune(model, **prune_kwargs(case))
        assert str(info.value) == record["error"]
        after = float_state(model)
        assert after.keys() == before.keys()
        for name, value in before.items():
            assert torch.equal(after[name], value), f"{name} changed by a refused call"
        return

    expected = recorded_tensors[case.family][case.id]
    model, report, dense = run_case(case)

    params = float_state(model)
    assert sorted(params) == sorted(expected["params"]), "parameter and buffer names differ"
    shapes = {n: tuple(t.shape) for n, t in params.items()}
    assert shapes == {n: tuple(t.shape) for n, t in expected["params"].items()}
    for name, value in params.items():
        torch.testing.assert_close(
            value, expected["params"][name], rtol=RTOL, atol=ATOL, msg=lambda m, n=name: f"{n}: {m}"
        )

    assert sorted(report.masks) == sorted(expected["masks"]), "mask names differ"
    for name, mask in report.masks.items():
        assert mask.dtype == torch.bool, name
        assert torch.equal(mask.to(torch.uint8), expected["masks"][name]), f"mask {name} differs"

    # logits add the forward path (attention function of uneven GQA groups, per-layer config sizes)
    torch.testing.assert_close(logits(model, case.seed), expected["logits"], rtol=RTOL, atol=1e-5)

    # the groups skipped must be the same; their reasons are prose (reworded since the fixtures)
    got, want = summary(report, model, dense), dict(record["summary"])
    assert [s.split(": ")[0] for s in got.pop("skipped")] == [s.split(": ")[0] for s in want.pop("skipped")]
    assert_same_summary(got, want)
