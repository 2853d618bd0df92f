"""Write the fixtures of the refactor parity test (``tests/test_parity.py``) from the current code.

    PYTHONPATH=. python3 tests/make_parity_fixtures.py [--allow-dirty]

Runs every case of :mod:`parity_cases` and writes, under ``tests/fixtures/parity/``:

- ``<family>.safetensors``: per case ``<case id>/<name>`` for every float parameter and buffer of the
  pruned model, ``<case id>/mask/<weight name>`` for every ``report.masks`` entry (uint8, 1 = pruned)
  and ``<case id>/logits`` (the pruned model's last-position logits on the calibration ids);
- ``cases.json``: per case its id, family, seed and keyword arguments, and either the public summary of
  the report (:func:`parity_cases.summary`) or, for a case the code refuses, the error message.

Regenerating replaces what the parity test compares against: do it only for a behaviour change that is
intended, and say so in the commit message. The commit the fixtures come from is recorded; the script
refuses to run when ``prunekit/`` differs from that commit (``--allow-dirty`` overrides, and says so in
``cases.json``). Not a test module: pytest does not collect it.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import warnings
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "fixtures" / "parity"
sys.path.insert(0, str(HERE))

import parity_cases as pc  # noqa: E402


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def _one_case_a_line(doc: dict) -> str:
    """Compact JSON with one case a line: small, and a regeneration diffs case by case."""
    compact = {"separators": (",", ":"), "sort_keys": True}
    head = ",\n".join(f" {json.dumps(k)}:{json.dumps(v, **compact)}" for k, v in doc.items() if k != "cases")
    cases = ",\n".join(f"  {json.dumps(c, **compact)}" for c in doc["cases"])
    return f'{{\n{head},\n "cases":[\n{cases}\n ]\n}}\n'


def main(argv: list[str]) -> int:
    allow_dirty = "--allow-dirty" in argv
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--", "prunekit"))
    if dirty and not allow_dirty:
        print(f"prunekit/ differs from {commit}: commit first, or pass --allow-dirty", file=sys.stderr)
        return 2
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)  # transformers' notes on the pure-PyTorch Mamba kernels
    torch.set_num_threads(1)  # as the test (one_thread): same op order, bit-identical on one machine

    import prunekit

    tensors: dict[str, dict[str, torch.Tensor]] = {f: {} for f in pc.FAMILIES}
    records = []
    for case in pc.CASES:
        record = case.as_json()
        try:
            model, report, dense = pc.run_case(case)
        except ValueError as error:
            if not case.refused:
                raise SystemExit(
                    f"{case.id}: refused ({error}); mark it refused=True or change it"
                ) from error
            record["error"] = str(error)
            records.append(record)
            print(f"{case.id:44s} refused: {error}")
            continue
        if case.refused:
            raise SystemExit(f"{case.id}: expected a ValueError, but the call pruned the model")
        out = tensors[case.family]
        for name, value in pc.float_state(model).items():
            out[f"{case.id}/{name}"] = value
        for name, mask in report.masks.items():
            out[f"{case.id}/mask/{name}"] = mask.detach().to(torch.uint8).contiguous()
        out[f"{case.id}/logits"] = pc.logits(model, case.seed)
        record["summary"] = pc.summary(report, model, dense)
        records.append(record)
        print(f"{case.id:44s} seed {case.seed:5d}  achieved {report.achieved:.4f}")

    OUT.mkdir(parents=True, exist_ok=True)
    # one key: safetensors keeps metadata in a hash map, so several keys would come out in any order
    # and an unchanged regeneration would not be byte-identical
    about = {"commit": commit, "dirty": dirty, "generator": "tests/make_parity_fixtures.py"}
    metadata = {"parity": json.dumps(about, sort_keys=True)}
    for family, named in tensors.items():
        save_file(named, str(OUT / f"{family}.safetensors"), metadata=metadata)
    doc = {
        "commit": commit,
        "dirty": dirty,
        "prunekit": prunekit.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cases": records,
    }
    (OUT / "cases.json").write_text(_one_case_a_line(doc), encoding="utf-8")
    sizes = {p.name: p.stat().st_size for p in sorted(OUT.iterdir())}
    print(
        f"{len(records)} cases from {commit}{' (dirty)' if dirty else ''}: {sizes}, "
        f"{sum(sizes.values())} bytes"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
