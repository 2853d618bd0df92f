"""``prunekit recover`` on a tiny pruned model directory: it recovers, keeps every pruned zero, saves a
loadable model with its report, and refuses a bad request before writing anything."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import make_byte_tokenizer, make_tiny_llama

import prunekit
from prunekit.cli import main
from prunekit.cli.recovery_flags import literal, recovery_settings
from prunekit.data import calibration_ids
from prunekit.models import load

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = "Recovery trains a few tensors of a pruned model back towards the dense one. " * 300
FAST = ["--seq-len", "32", "--n-samples", "8", "--batch-size", "4", "--rank", "2", "--steps", "3"]
FAST += ["--eval-windows", "2", "--progress", "off"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """(dense directory, pruned directory, text file, the pruned zeros by parameter)."""
    root = tmp_path_factory.mktemp("recover")
    dense = make_tiny_llama(seed=2)
    dense.resize_token_embeddings(300, mean_resizing=False)
    tok = make_byte_tokenizer()
    dense.save_pretrained(root / "dense")
    tok.save_pretrained(root / "dense")
    text = root / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    ids = calibration_ids(tok, n_samples=4, seq_len=32, source=str(text))
    report = prunekit.prune(dense, "magnitude", 0.5, calibration=ids)
    prunekit.save_pretrained(dense, root / "pruned", tokenizer=tok, record=report)
    zeros = {n: p == 0 for n, p in dense.named_parameters() if ".layers." in n and n.endswith("proj.weight")}
    return root / "dense", root / "pruned", text, zeros


def _recover(dirs, out, *extra: str) -> int:
    _dense, pruned, text, _zeros = dirs
    return main(["recover", "--model", str(pruned), "--out", str(out), "--text", str(text), *FAST, *extra])


@pytest.mark.parametrize("mode", ["retrain", "reconstruct"])
def test_recover_command_saves_a_recovered_model_that_keeps_its_zeros(dirs, tmp_path, capsys, mode):
    dense, pruned, _text, zeros = dirs
    out = tmp_path / "healed"
    extra = ["--dense", str(dense)] if mode == "reconstruct" else []
    assert _recover(dirs, out, "--mode", mode, "--lora", "mask", "--train", "norms,lora", *extra) == 0
    printed = capsys.readouterr().out
    assert f"recovery perp ({mode}, lora=mask)" in printed and "held-out perplexity:" in printed
    assert f"saved to {out}" in printed

    assert (out / "recovery.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((out / "recovery.json").read_text())
    assert summary["mode"] == mode and summary["options"]["rank"] == 2
    assert summary["options"]["train"] == ["norms", "lora"]
    assert summary["perplexity_before"] > 0 and summary["perplexity_after"] > 0
    model, _tok = load(str(out))
    before, _ = load(str(pruned))
    params = dict(model.named_parameters())
    for name, zero in zeros.items():
        assert torch.all(params[name][zero] == 0), name  # every pruned weight is still pruned
    changed = [n for n, p in before.named_parameters() if not torch.equal(p, params[n])]
    assert any(n.endswith("proj.weight") for n in changed)  # the merged adapters moved kept weights
    config = json.loads((out / "config.json").read_text())
    records = config["prunekit"]["records"]
    assert records[0]["method"] == "magnitude" and records[-1]["recovery"]["mode"] == mode
    masks = prunekit.io.load_masks(out)
    assert masks and all(torch.equal(masks[n], zeros[n]) for n in masks if n in zeros)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--rank", "0"], "rank must be >= 1"),
        (["--mode", "reconstruct"], "pass --dense"),
        (["--dense", "DENSE"], "--dense is the reference of --mode reconstruct"),
        (["--lr", "0"], r"lr must lie in \(0.0, 10.0\]"),
        (["--train", "norms", "--lora", "scale"], "lora configures the adapters"),
        (["--mode", "reconstruct", "--dense", "DENSE", "--tokens", "99"], "tokens"),
        (["--text", "no-such-file.txt"], "is not a file"),
    ],
)
def test_bad_requests_exit_2_and_write_nothing(dirs, tmp_path, capsys, extra, message):
    out = tmp_path / "healed"
    extra = [str(dirs[0]) if e == "DENSE" else e for e in extra]
    assert _recover(dirs, out, *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("prunekit: error: ")
    assert re.search(message, err), err
    assert not out.exists()


def test_a_non_empty_out_is_refused_without_overwrite(dirs, tmp_path, capsys):
    out = tmp_path / "healed"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _recover(dirs, out) == 2
    assert "not empty" in capsys.readouterr().err and sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert _recover(dirs, dirs[1], "--overwrite") == 2  # never over the model it reads
    assert "is an input" in capsys.readouterr().err
    assert _recover(dirs, out, "--overwrite") == 0 and (out / "recovery.json").is_file()


def test_unparsable_values_are_argparse_errors(dirs, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _recover(dirs, tmp_path / "healed", "--rank", "two")
    assert exit_info.value.code == 2 and "rank must be an integer, got 'two'" in capsys.readouterr().err
    assert not (tmp_path / "healed").exists()


def test_key_value_lists_parse_by_the_options_types():
    parsed = recovery_settings("mode=reconstruct,steps=8,lr=5e-4,train=norms,lora,gradient-checkpointing=off")
    assert parsed == {
        "mode": "reconstruct",
        "steps": 8,
        "lr": 5e-4,
        "train": ("norms", "lora"),
        "gradient_checkpointing": False,
    }
    assert recovery_settings("alpha=4,unknown=2.5") == {"alpha": 4.0, "unknown": 2.5}
    assert [literal(t) for t in ("3", "0.5", "on", "none", "mask")] == [3, 0.5, True, None, "mask"]
    for bad in ("steps", "steps=1,steps=2", "=3", "steps=x"):
        with pytest.raises(Exception, match="key=value|twice|integer"):
            recovery_settings(bad)
