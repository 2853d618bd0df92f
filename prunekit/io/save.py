"""Writing a pruned model: safetensors weights, config.json with the prunekit section, side files."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import transformers
from safetensors.torch import save_file
from transformers import PreTrainedModel

from ..families import get_adapter
from ..version import __version__
from .format import FORMAT, LIVE_KEYS, MASKS_FILE, REPORT_FILE, SECTION, SPARSITY_FILE
from .load import module_named

__all__ = ["save_pretrained"]


@runtime_checkable
class PruneReport(Protocol):
    """What saving reads of a :class:`prunekit.engine.report.PruneReport` (io sits below the engine)."""

    structure: str
    masks: dict

    def to_dict(self) -> dict[str, Any]: ...


def save_pretrained(
    model: PreTrainedModel,
    directory: str | Path,
    tokenizer: Any = None,
    record: dict[str, Any] | PruneReport | list[PruneReport] | None = None,
    *,
    report: PruneReport | list[PruneReport] | None = None,
    masks: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``model`` (and ``tokenizer``) to ``directory`` so that :func:`from_pretrained` restores it.

    ``record`` is a dict of free-form facts to keep with the model (e.g. ``{"calibration": "docs"}``),
    or the :class:`PruneReport` (or list of them) of the prune calls; ``report=`` takes reports too.
    Reports contribute a compact record to ``config.json`` (method, structure, sparsity, options, date,
    versions), their full ``to_dict()`` to ``prunekit_report.json``, and their masks (unstructured,
    N:M) to ``prunekit_masks.safetensors`` with per-parameter counts in ``prunekit_sparsity.json``;
    ``masks=`` adds masks directly (param name -> bool tensor). Returns the directory.
    """
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"save_pretrained needs a transformers PreTrainedModel, got {type(model).__name__}")
    reports, user_record = _split_record(record, report)
    all_masks = _collect_masks(model, reports, masks)
    if user_record is not None:
        _check_json("record", user_record)

    adapter = get_adapter(model)
    per_layer = getattr(model.config, "prunekit_layers", None)
    if per_layer:
        adapter.sync(model)  # the recorded sizes must be the current shapes, not stale ones
        per_layer = [dict(d) for d in model.config.prunekit_layers]
    added = sorted(getattr(model.config, "prunekit_added_biases", None) or [])
    for name in added:
        if getattr(module_named(model, name, "added bias"), "bias", None) is None:
            raise ValueError(f"config.prunekit_added_biases lists {name!r}, which has no bias")

    top_level, plain = {}, True
    if per_layer:
        top_level = adapter.plain_config_fields(model, per_layer)
        plain = top_level is not None
    flags, zero_biases, unflagged = _bias_flags(model, adapter, added) if plain and added else ({}, {}, [])
    if per_layer and (not plain or unflagged):
        # a plain loader could not build this model (or would drop a bias): make it fail on shapes
        top_level, plain, flags, zero_biases = adapter.base_config_fields(model, per_layer), False, {}, {}

    records = list(getattr(model.config, "prunekit_records", None) or [])
    records += [_compact(r, user_record) for r in reports] or ([_stamp(user_record)] if user_record else [])
    section = {
        "format": FORMAT,
        "version": _version(),
        "adapter": adapter.name,
        "layers": per_layer or None,
        "base_fields": getattr(model.config, "prunekit_base_fields", None) or None,
        "added_biases": added,
        "bias_flags": {flag: bool(getattr(model.config, flag, False)) for flag in flags},
        "zero_biases": sorted(zero_biases),
        "plain_loadable": plain,
        "records": records,
        "masks": MASKS_FILE if all_masks else None,
    }

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    state.update(zero_biases)
    with _config_as_saved(model.config, {**top_level, **flags, SECTION: section}):
        # the names the model has (transformers would otherwise rewrite MoE experts to a legacy per-expert
        # layout, which only its own loader converts back)
        model.save_pretrained(out, state_dict=state, save_original_format=False)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    _write_side_files(out, model, reports, all_masks)
    return out


def _split_record(record, report) -> tuple[list[PruneReport], dict | None]:
    """Reports from ``record=`` and ``report=``, and the free-form dict if one was given."""
    reports: list[PruneReport] = []
    user = None
    for value in (record, report):
        if value is None:
            continue
        if isinstance(value, PruneReport):
            reports.append(value)
        elif isinstance(value, dict) and value is record:
            user = value
        elif isinstance(value, (list, tuple)) and all(isinstance(r, PruneReport) for r in value):
            reports.extend(value)
        else:
            raise TypeError(
                "record/report must be a dict, a PruneReport or a list of PruneReports, "
                f"got {type(value).__name__}"
            )
    return reports, user


def _collect_masks(model, reports: list[PruneReport], masks) -> dict[str, tuple[torch.Tensor, str]]:
    """Param name -> (bool mask, structure), checked against the model; later masks add to earlier ones."""
    params = dict(model.named_parameters())
    found: dict[str, tuple[torch.Tensor, str]] = {}
    sources = [(r.masks, r.structure) for r in reports] + [(masks or {}, "mask")]
    for source, structure in sources:
        for name, mask in source.items():
            if name not in params:
                raise ValueError(f"mask for {name!r}: the model has no such parameter")
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
                raise TypeError(f"mask for {name!r} must be a bool tensor")
            if tuple(mask.shape) != tuple(params[name].shape):
                raise ValueError(
                    f"mask for {name!r} has shape {list(mask.shape)}, "
                    f"the parameter {list(params[name].shape)}"
                )
            if name in found:
                mask, structure = found[name][0] | mask.cpu(), f"{found[name][1]}+{structure}"
            found[name] = (mask.detach().cpu().contiguous(), structure)
    return found


def _bias_flags(model, adapter, added: list[str]) -> tuple[dict, dict[str, torch.Tensor], list[str]]:
    """Config flags that make the family's class create the added biases, the zero biases they also
    create, and the added biases no flag covers.

    Only for plain-loadable (uniform) models: a plain loader would otherwise drop the added biases
    silently (transformers only reports unexpected keys).
    """
    names = {id(m): n for n, m in model.named_modules()}
    blocks = [names[id(layer)] for layer in adapter.layers(model)]
    flags: dict[str, bool] = {}
    unflagged = []
    for name in added:
        block = next((b for b in blocks if name.startswith(b + ".")), None)
        suffix = name[len(block) + 1 :] if block else name
        flag = next((f for f, mods in adapter.bias_flags.items() if suffix in mods), None)
        if flag is None:
            unflagged.append(name)
        elif not getattr(model.config, flag, False):
            flags[flag] = True
    zeros: dict[str, torch.Tensor] = {}
    for flag in flags:
        for block in blocks:
            for suffix in adapter.bias_flags[flag]:
                mod = model.get_submodule(f"{block}.{suffix}")
                if mod.bias is None:
                    zeros[f"{block}.{suffix}.bias"] = torch.zeros(
                        mod.weight.shape[0], dtype=mod.weight.dtype, device=mod.weight.device
                    )
    return flags, zeros, unflagged


def _compact(report: PruneReport, user: dict | None) -> dict[str, Any]:
    """The few facts about one prune call that belong in config.json."""
    full = report.to_dict()
    keys = ("method", "structure", "sparsity", "achieved", "params_before", "params_after", "options")
    return _stamp({**{k: full[k] for k in keys}, **(user or {})})


def _stamp(record: dict[str, Any]) -> dict[str, Any]:
    return {
        **record,
        "prunekit_version": _version(),
        "transformers_version": transformers.__version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _version() -> str:
    return __version__


def _check_json(what: str, value: Any) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{what} must be JSON-serialisable (str/int/float/bool/list/dict): {err}") from None


@contextlib.contextmanager
def _config_as_saved(config, values: dict[str, Any]):
    """Give ``config`` the saved top-level values and section while transformers writes it, then restore.

    transformers validates the config it writes (Mamba-2 checks ``expand`` against ``num_heads``), so
    the saved values have to be on the object, not patched into the JSON afterwards.
    """
    missing = object()
    hidden = LIVE_KEYS
    keys = [config.attribute_map.get(k, k) for k in (*values, *hidden)]
    before = {k: config.__dict__.get(k, missing) for k in keys}
    try:
        for key in hidden:
            config.__dict__.pop(key, None)
        for key, value in values.items():
            setattr(config, key, value)
        yield
    finally:
        for key, value in before.items():
            if value is missing:
                config.__dict__.pop(key, None)
            else:
                config.__dict__[key] = value


def _write_side_files(out: Path, model, reports: list[PruneReport], masks: dict) -> None:
    """Masks, per-parameter sparsity and full reports; stale copies from an earlier save are removed."""
    for name in (MASKS_FILE, SPARSITY_FILE, REPORT_FILE):
        (out / name).unlink(missing_ok=True)
    if reports:
        (out / REPORT_FILE).write_text(json.dumps([r.to_dict() for r in reports], indent=2) + "\n")
    if not masks:
        return
    save_file({name: mask for name, (mask, _s) in masks.items()}, str(out / MASKS_FILE))
    params = dict(model.named_parameters())
    table = {}
    for name, (mask, structure) in sorted(masks.items()):
        weight = params[name].detach()
        table[name] = {
            "structure": structure,
            "shape": list(mask.shape),
            "masked": int(mask.sum()),
            "sparsity": float(mask.float().mean()),
            "zeros": int((weight == 0).sum()),
            "masked_nonzero": int((weight.cpu()[mask] != 0).sum()),
        }
    (out / SPARSITY_FILE).write_text(json.dumps(table, indent=2) + "\n")
