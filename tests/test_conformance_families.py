"""The conformance suite (:mod:`conformance`) on every causal-LM family prunekit supports.

The families come from transformers' causal-LM mapping filtered by ``support(config)``, so a family
joins as soon as prunekit supports it; llama, mamba and mamba2 must always be among them. A check a
family is known to fail is listed in :data:`KNOWN_FAILURES` with its reason and runs as a strict xfail.
Each family takes a few seconds (two traces, one calibrated prune, generation, two save/reload round
trips): about 20 s for the ten families supported today, on one core.
"""

from __future__ import annotations

import pytest
from conformance import FamilyConformance
from family_configs import FAMILIES, mapping_types, tiny_config
from family_support import support

pytestmark = pytest.mark.usefixtures("one_thread")

#: supported whatever else changes
CORE = ("llama", "mamba", "mamba2")

#: model type -> {test name: why it fails} (see the module docstring)
KNOWN_FAILURES: dict[str, dict[str, str]] = {}


def conformance_types() -> list[str]:
    """Buildable mapping types that ``support()`` calls supported, in the mapping's order."""
    return [t for t in mapping_types() if t in FAMILIES and support(tiny_config(t)).supported]


CONFORMANCE_TYPES = conformance_types()

for _type in CONFORMANCE_TYPES:
    _name = "Test_" + _type.replace("-", "_")
    globals()[_name] = type(
        _name, (FamilyConformance,), {"model_type": _type, "known_failures": KNOWN_FAILURES.get(_type, {})}
    )


def test_the_core_families_are_in_the_run():
    assert set(CORE) <= set(CONFORMANCE_TYPES), f"missing: {sorted(set(CORE) - set(CONFORMANCE_TYPES))}"


def test_known_failures_name_families_and_tests_that_exist():
    tests = {name for name in dir(FamilyConformance) if name.startswith("test_")}
    for model_type, failures in KNOWN_FAILURES.items():
        assert model_type in CONFORMANCE_TYPES, f"{model_type} is not in the conformance run"
        named = {name.split("[")[0] for name in failures}
        assert named <= tests, f"{model_type}: no such test {sorted(named - tests)}"
