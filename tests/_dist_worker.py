"""Launched by tests/test_scale.py under ``torchrun --nproc_per_node 2``: prune with several methods.

Every rank writes what it ended with to ``OUT/rank<r>.safetensors`` (weights and masks per method), so
the test can compare the ranks with each other and with one process on the whole calibration set.
With ``FAIL_RANK=r`` that rank raises in the middle of calibration (third pruned matrix); then no rank
may write anything.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

import prunekit
from prunekit.engine import distributed
from prunekit.methods.scorers import SCORERS
from prunekit.methods.scorers.base import Scorer


def main(model_dir: str, ids_file: str, out: str, methods: list[str]) -> None:
    torch.set_num_threads(1)
    assert distributed.init(), "not launched by torchrun"
    rank = distributed.rank()
    if int(os.environ.get("FAIL_RANK", "-1")) == rank:
        calls = {"n": 0}
        for cls in {Scorer, *SCORERS.values()}:
            if "prune_matrix" not in cls.__dict__:
                continue
            original = cls.prune_matrix

            def failing(self, *args, _original=original, **kwargs):
                calls["n"] += 1
                if calls["n"] == 3:
                    raise RuntimeError(f"injected failure on rank {rank}")
                return _original(self, *args, **kwargs)

            cls.prune_matrix = failing
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = load_file(ids_file)["ids"]
    results = {}
    for method in methods:
        pruned = copy.deepcopy(model)
        report = prunekit.prune(pruned, method=method, sparsity=0.5, calibration=ids, batch_size=2)
        results.update({f"{method}/{k}": v.clone() for k, v in pruned.state_dict().items()})
        results.update({f"{method}/mask/{k}": v for k, v in report.masks.items()})
    Path(out).mkdir(parents=True, exist_ok=True)
    save_file(results, str(Path(out) / f"rank{rank}.safetensors"))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(","))
