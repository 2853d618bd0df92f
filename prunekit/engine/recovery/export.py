"""Trained plain-LoRA adapters in PEFT's on-disk format, for users who keep adapters apart.

PEFT (``peft.PeftModel.from_pretrained(pruned_model, directory)``) computes ``W x + (α/r)·B A x``, which
is exactly prunekit's plain LoRA before its masked merge, so a plain adapter written here reproduces the
adapted model. MaskLoRA and ScaleLoRA have no PEFT equivalent (PEFT cannot mask or multiply), nor have
prunekit's bias and norm offsets or a head update shared with a tied embedding, so only
``lora="plain"`` with ``train=["lora"]`` on ``torch.nn.Linear`` targets is exported. Note that PEFT's own
``merge_and_unload`` adds the full ``B A`` and so fills the pruned zeros; prunekit's merge does not.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ...spec import SpecError
from ...spec.recovery import RecoverySpec
from .trainable import Trainables

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"


def check_exportable(spec: RecoverySpec, directory: str | Path) -> Path:
    """Refuse, before training, what PEFT's format cannot hold, and a non-empty target directory."""
    if spec.lora != "plain" or spec.train != ("lora",):
        raise SpecError(
            "save_adapters writes PEFT LoRA adapters, which hold plain LoRA only: use lora='plain' and "
            f"train=['lora'] (got lora={spec.lora!r}, train={list(spec.train)})",
            "save_adapters",
        )
    path = Path(directory).expanduser()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise SpecError(f"save_adapters: {path} exists and is not an empty directory", "save_adapters")
    return path


def save_peft_adapters(trainables: Trainables, spec: RecoverySpec, path: Path) -> None:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` for the attached plain LoRA."""
    tensors, targets = {}, []
    for slot, update in trainables.updates:
        module, _attr = slot.holders[0]
        if not isinstance(module, torch.nn.Linear):
            raise SpecError(
                f"save_adapters: {slot.name} is not a torch.nn.Linear; PEFT cannot load it", "save_adapters"
            )
        name = slot.name.removesuffix(".weight")
        targets.append(name)
        tensors[f"base_model.model.{name}.lora_A.weight"] = update.a.detach().cpu().contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = update.b.detach().cpu().contiguous()
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": spec.rank, "lora_alpha": spec.alpha,
        "target_modules": targets, "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
        "inference_mode": True, "init_lora_weights": True, "use_rslora": False, "modules_to_save": None,
        "base_model_name_or_path": None,
    }  # fmt: skip
    tmp = path.with_name(path.name + ".tmp-adapters")
    tmp.mkdir(parents=True, exist_ok=False)
    save_file(tensors, str(tmp / WEIGHTS_FILE))
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
    if path.exists():
        path.rmdir()
    tmp.rename(path)
