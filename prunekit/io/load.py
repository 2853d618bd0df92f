"""Loading a saved directory: build from config, reshape blocks, create added biases, load strictly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from ..families import get_adapter
from ..families.base import resize_parameter
from .format import FORMAT, LIVE_KEYS, MASK_SHARDS, MASKS_FILE, SECTION, CheckpointError

__all__ = ["from_pretrained", "is_prunekit_dir", "load_masks", "module_named"]


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
    for key in (SECTION, *LIVE_KEYS):
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
        _reshape_blocks(model, adapter, path, section["layers"])
    for name in section["added_biases"]:
        mod = module_named(model, name, "added bias")
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


def _reshape_blocks(model: torch.nn.Module, adapter, path: Path, recorded: Any) -> None:
    """Give every block parameter the checkpoint's shape, restore what shapes cannot tell, and check that
    the sizes the parts read back are the recorded ones.

    Shapes come from the file's header (no tensor is read); only parameters of the blocks' parts may
    differ from the dense build (a wrong-sized embedding or norm still fails the strict load), and each
    part checks that its projections agree with one another when it reads its sizes back.
    """
    try:
        per_layer = adapter.read_sizes(model, recorded)
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None
    shapes = _checkpoint_shapes(path)
    holders = _holders(model)
    for _block, found in adapter.block_parts(model):
        for _part, part_name, module in found:
            for name, param in list(module.named_parameters()):
                shape = shapes.get(f"{part_name}.{name}")
                if shape is not None and tuple(shape) != tuple(param.shape):
                    owner, _, attr = f"{part_name}.{name}".rpartition(".")
                    holder = model.get_submodule(owner)
                    resize_parameter(holder, attr, tuple(shape))
                    for other, other_attr in holders.get(id(param), ()):  # tied copies keep the tie
                        other._parameters[other_attr] = holder._parameters[attr]
    adapter.restore(model, per_layer)
    try:
        adapter.sync(model)
    except ValueError as err:
        raise CheckpointError(
            f"{path}: the checkpoint's shapes do not fit its recorded sizes: {err}"
        ) from None
    for i, (want, have) in enumerate(zip(per_layer, model.config.prunekit_layers)):
        if want != have:
            raise CheckpointError(
                f"{path}: layer {i}: recorded sizes {want}, the checkpoint's shapes give {have}"
            )


def _holders(model: torch.nn.Module) -> dict[int, list[tuple[torch.nn.Module, str]]]:
    """Every (module, attribute) holding each parameter: a tied parameter (Zamba2's shared attention block,
    repeated as distinct modules) is saved under one name, and every holder must get its resized copy."""
    out: dict[int, list[tuple[torch.nn.Module, str]]] = {}
    for mod in model.modules():
        for attr, param in mod._parameters.items():
            if param is not None:
                out.setdefault(id(param), []).append((mod, attr))
    return out


def _checkpoint_shapes(path: Path) -> dict[str, list[int]]:
    shapes = {}
    for file in weight_files(path):
        with safe_open(str(file), "pt") as f:
            shapes.update({key: list(f.get_slice(key).get_shape()) for key in f.keys()})
    return shapes


def load_masks(directory: str | Path) -> dict[str, torch.Tensor]:
    """The saved pruning masks (param name -> bool tensor, True = pruned); empty when none were saved."""
    directory = Path(directory)
    files = [directory / MASKS_FILE] if (directory / MASKS_FILE).is_file() else []
    files += sorted(directory.glob(MASK_SHARDS))  # written block by block (offloaded pruning)
    masks: dict[str, torch.Tensor] = {}
    for path in files:
        with safe_open(str(path), "pt") as f:
            masks.update({k: f.get_tensor(k) for k in f.keys()})
    return masks


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


def module_named(model, name: str, what: str) -> torch.nn.Module:
    try:
        mod = model.get_submodule(name)
    except AttributeError:
        raise CheckpointError(f"{what} {name!r}: the model has no such module") from None
    if not isinstance(getattr(mod, "weight", None), torch.Tensor):
        raise CheckpointError(f"{what} {name!r}: the module has no weight to size a bias from")
    return mod


def weight_files(path: Path) -> list[Path]:
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
    for file in weight_files(path):
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
        mod = module_named(model, module_name, "zero bias")
        if mod.bias is None or bool(mod.bias.detach().any()):
            raise CheckpointError(
                f"{name}: recorded as a zero bias added for plain loaders, but it is not zero"
            )
        mod.register_parameter("bias", None)
    for flag, value in section["bias_flags"].items():
        setattr(model.config, flag, value)
