"""What prunekit supports for a family, from its config alone (before any weights are loaded)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import adapter_for_config
from .blocks import missing_parts


@dataclass(frozen=True)
class Support:
    """``reason`` is None when the family is supported for structured and unstructured pruning, saving,
    reloading and generation; otherwise it names the family and what is missing (unstructured and N:M
    pruning of its linear layers still work)."""

    model_type: str
    adapter: str | None
    reason: str | None

    @property
    def supported(self) -> bool:
        return self.reason is None


def support(config: Any) -> Support:
    model_type = str(getattr(config, "model_type", None) or type(config).__name__)
    adapter = adapter_for_config(config)
    if not adapter.parts:
        return Support(model_type, None, f"the {model_type!r} family: {missing_parts(config)}")
    refusal = adapter.refusal(config)
    if refusal:
        return Support(model_type, adapter.name, f"the {model_type!r} family: {refusal}")
    return Support(model_type, adapter.name, None)
