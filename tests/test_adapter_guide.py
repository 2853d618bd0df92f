"""The adapter guide's worked example (docs/adapters.md, section 4) is run as written and must hold."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import torch

from prunekit.families import ADAPTERS

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "adapters.md"


def _example_blocks() -> list[str]:
    text = GUIDE.read_text()
    section = text[text.index("## 4. Worked example") : text.index("## 5. Checklist")]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_guide_adapter_is_the_shipped_one_and_passes_its_checks(monkeypatch):
    adapter_code, check_code = _example_blocks()
    registry = dict(ADAPTERS)
    monkeypatch.setattr("prunekit.families.base.ADAPTERS", registry)
    registry.pop("starcoder2")
    exec(compile(adapter_code, "docs/adapters.md", "exec"), {})
    shipped = ADAPTERS["starcoder2"]()
    written = registry["starcoder2"]()
    assert [type(p) for p in written.parts] == [type(p) for p in shipped.parts]
    assert [vars(p) for p in written.parts] == [vars(p) for p in shipped.parts]

    space: dict = {}
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        exec(compile(check_code, "docs/adapters.md", "exec"), space)
    lines = printed.getvalue().splitlines()
    assert lines[0] == "['attention', 'mlp']"
    assert float(lines[1]) == 0.0
    first = space["model"].config.prunekit_layers[0]
    assert first["attention"]["num_attention_heads"] < 4 and first["mlp"]["intermediate_size"] < 128
    assert lines[3] == "True"
    assert isinstance(space["ids"], torch.Tensor)
