"""Save pruned models to a directory and load them back, exactly.

Structured pruning can leave every block with its own sizes, which a Hugging Face config (one
``intermediate_size``, one ``num_attention_heads`` ...) cannot describe, and bias compensation can add
biases the family's config never asks for. :func:`save_pretrained` therefore writes an ordinary
Hugging Face directory (safetensors weights, ``config.json``, tokenizer) whose ``config.json`` carries a
``prunekit`` section with the per-block sizes, the added biases and the pruning record.
:func:`from_pretrained` builds the model from the config, lets the family's adapter reshape every block
to the recorded sizes, creates the added biases and only then loads the weights -- strictly: every
tensor present, every shape equal, nothing left over, or a :class:`CheckpointError` that names the
tensor. transformers 5 has a ``per_layer_config`` mechanism, but the Llama, Mamba and Mamba-2 classes
do not read it (building one raises ``AmbiguousGlobalPerLayerAttributeError``), so it cannot be used.

When every block has the same sizes the top-level config fields hold them, so a plain
``AutoModelForCausalLM.from_pretrained`` rebuilds the same model; added biases are then expressed with
the family's bias flag (``attention_bias``, ``mlp_bias``, ``use_bias``) plus zero biases for the other
modules that flag covers, which :func:`from_pretrained` drops again. When blocks differ, a plain loader
stops with transformers' own size-mismatch error instead of loading a wrong model.

Nothing here uses pickle: weights and masks are safetensors, everything else JSON.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from .adapters import get_adapter
from .core.report import PruneReport

__all__ = [
    "CheckpointError",
    "FORMAT",
    "MASKS_FILE",
    "REPORT_FILE",
    "SPARSITY_FILE",
    "from_pretrained",
    "is_prunekit_dir",
    "load_masks",
    "save_pretrained",
]

#: version of the ``prunekit`` config section; loaders refuse newer ones
FORMAT = 1
SECTION = "prunekit"
MASKS_FILE = "prunekit_masks.safetensors"
SPARSITY_FILE = "prunekit_sparsity.json"
REPORT_FILE = "prunekit_report.json"
#: config attributes prunekit keeps on live models; saved inside the section instead of top-level
_LIVE_KEYS = ("prunekit_layers", "prunekit_added_biases", "prunekit_records", "prunekit_base_fields")


class CheckpointError(ValueError):
    """A saved directory does not match its own config: a missing, extra or mis-shaped tensor."""


# ---------------------------------------------------------------------------------------------- save
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
        if getattr(_module(model, name, "added bias"), "bias", None) is None:
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
        model.save_pretrained(out, state_dict=state)
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
    from . import __version__

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
    hidden = _LIVE_KEYS
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


# ---------------------------------------------------------------------------------------------- load
def is_prunekit_dir(directory: str | Path) -> bool:
    """True when ``directory`` holds a config.json written by prunekit (section or per-layer fields)."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        return False
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return SECTION in config or "prunekit_layers" in config


def from_pretrained(directory: str | Path, torch_dtype: torch.dtype | None = None) -> PreTrainedModel:
    """Rebuild a model saved by :func:`save_pretrained` (or any Hugging Face safetensors directory).

    The config builds the model, the adapter reshapes each block to the recorded sizes, added biases
    are created, and then every tensor is loaded strictly. ``torch_dtype`` defaults to the saved dtype.

    Raises:
        CheckpointError: a tensor is missing, unexpected, or shaped differently from what the config
            (with its per-layer sizes) describes; or a recorded zero bias is not zero.
        ValueError: no config.json, or a ``prunekit`` section this version cannot read.
    """
    path = Path(directory)
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} is not a saved model directory: it has no config.json")
    raw = json.loads((path / "config.json").read_text())
    section = _read_section(raw)
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    for key in (SECTION, *_LIVE_KEYS):
        if hasattr(config, key):
            delattr(config, key)
    dtype = torch_dtype or _saved_dtype(config)

    from transformers.initialization import no_init_weights

    with no_init_weights():  # every tensor is overwritten from the checkpoint
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()

    adapter = get_adapter(model)
    if section.get("base_fields"):
        model.config.prunekit_base_fields = dict(section["base_fields"])
    if section["layers"]:
        adapter.check_layer_fields(model, section["layers"])
        adapter.apply_layer_fields(model, section["layers"])
    for name in section["added_biases"]:
        mod = _module(model, name, "added bias")
        if getattr(mod, "bias", None) is None:
            weight = mod.weight
            mod.bias = torch.nn.Parameter(
                torch.empty(weight.shape[0], dtype=weight.dtype, device=weight.device)
            )

    _load_strict(model, path)
    _drop_zero_biases(model, section)
    if section["added_biases"]:
        model.config.prunekit_added_biases = list(section["added_biases"])
    if section["records"]:
        model.config.prunekit_records = list(section["records"])
    return model.eval()


def load_masks(directory: str | Path) -> dict[str, torch.Tensor]:
    """The saved pruning masks (param name -> bool tensor, True = pruned); empty when none were saved."""
    path = Path(directory) / MASKS_FILE
    if not path.is_file():
        return {}
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _read_section(raw: dict) -> dict[str, Any]:
    """The prunekit section with defaults; directories from before the section used top-level keys."""
    section = raw.get(SECTION)
    if section is None:
        section = {"layers": raw.get("prunekit_layers"), "added_biases": raw.get("prunekit_added_biases")}
    if not isinstance(section, dict):
        raise ValueError(f"config.json: the {SECTION!r} entry must be an object")
    if section.get("format", FORMAT) > FORMAT:
        raise ValueError(
            f"config.json was written by a newer prunekit (format {section['format']} > {FORMAT}); "
            "upgrade prunekit"
        )
    out = {"layers": None, "added_biases": [], "bias_flags": {}, "zero_biases": [], "records": []}
    out.update({k: v for k, v in section.items() if v is not None})
    return out


def _saved_dtype(config) -> torch.dtype:
    dtype = getattr(config, "dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def _module(model, name: str, what: str) -> torch.nn.Module:
    try:
        mod = model.get_submodule(name)
    except AttributeError:
        raise CheckpointError(f"{what} {name!r}: the model has no such module") from None
    if not isinstance(getattr(mod, "weight", None), torch.Tensor):
        raise CheckpointError(f"{what} {name!r}: the module has no weight to size a bias from")
    return mod


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / s for s in shards]
    single = path / "model.safetensors"
    if not single.is_file():
        raise CheckpointError(f"{path} has no model.safetensors (prunekit loads safetensors only)")
    return [single]


def _load_strict(model: torch.nn.Module, path: Path) -> None:
    """Copy every checkpoint tensor into the model after checking names and shapes all agree.

    Tied parameters (one tensor under several names) need one of their names in the file.
    """
    aliases: dict[int, list[str]] = {}
    tensors: dict[int, torch.Tensor] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        aliases.setdefault(id(tensor), []).append(name)
        tensors[id(tensor)] = tensor
    owner = {name: key for key, names in aliases.items() for name in names}

    where: dict[str, tuple[Path, list[int]]] = {}
    for file in _weight_files(path):
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                where[key] = (file, list(f.get_slice(key).get_shape()))

    problems = []
    for key, names in aliases.items():
        present = [n for n in names if n in where]
        if not present:
            problems.append(f"{names[0]}: missing from the checkpoint")
        for n in present:
            want = list(tensors[key].shape)
            if where[n][1] != want:
                problems.append(f"{n}: the checkpoint holds shape {where[n][1]}, the config describes {want}")
    problems += [
        f"{n}: in the checkpoint but not in the model the config describes" for n in where if n not in owner
    ]
    if problems:
        shown = "\n  ".join(problems[:20]) + (
            f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        )
        raise CheckpointError(f"{path} does not match its config.json:\n  {shown}")

    by_file: dict[Path, list[str]] = {}
    for name, (file, _shape) in where.items():
        by_file.setdefault(file, []).append(name)
    with torch.no_grad():
        for file, names in by_file.items():
            with safe_open(str(file), "pt") as f:
                for name in names:
                    tensors[owner[name]].copy_(f.get_tensor(name))


def _drop_zero_biases(model, section: dict) -> None:
    """Remove the zero biases save added for plain loaders, and restore the flags they needed."""
    for name in section["zero_biases"]:
        module_name = name.removesuffix(".bias")
        mod = _module(model, module_name, "zero bias")
        if mod.bias is None or bool(mod.bias.detach().any()):
            raise CheckpointError(
                f"{name}: recorded as a zero bias added for plain loaders, but it is not zero"
            )
        mod.register_parameter("bias", None)
    for flag, value in section["bias_flags"].items():
        setattr(model.config, flag, value)
