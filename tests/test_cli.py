"""The prunekit command line on a tiny local model directory and a small text file."""

from __future__ import annotations

import pytest
import torch
from conftest import make_byte_tokenizer, make_tiny_llama

from prunekit.cli import main

TEXT = "Pruning removes weights that matter least. " * 400


@pytest.fixture
def model_dir(tmp_path):
    path = tmp_path / "tiny"
    model = make_tiny_llama(seed=1)
    model.config.vocab_size = 300
    model.resize_token_embeddings(300)
    model.save_pretrained(path)
    make_byte_tokenizer().save_pretrained(path)
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    return path, text


def _args(path, text, *extra):
    return [
        "prune",
        "--model",
        str(path),
        "--text",
        str(text),
        "--seq-len",
        "32",
        "--calib-samples",
        "2",
        "--eval-windows",
        "3",
        *extra,
    ]


def test_graph_command_prints_groups(model_dir, capsys):
    path, _ = model_dir
    assert main(["graph", "--model", str(path), "--rejected"]) == 0
    out = capsys.readouterr().out
    assert "[mlp] layers.0.mlp: gate_proj.out[48] + up_proj.out[48] → down_proj.in[48]" in out
    assert "[attention] layers.1.self_attn: 4 heads in 2 groups of 2 × 8" in out
    assert "not prunable" in out


def test_prune_command_reports_and_saves_a_loadable_model(model_dir, tmp_path, capsys):
    path, text = model_dir
    out_dir = tmp_path / "out"
    assert main(_args(path, text, "--sparsity", "0.5", "--out", str(out_dir))) == 0
    out = capsys.readouterr().out
    assert "layers.0" in out and "total" in out and "perplexity on 3 windows" in out
    from prunekit.models import load

    model, _tok = load(str(out_dir))
    w = model.model.layers[0].mlp.up_proj.weight
    assert int((w == 0).sum()) == w.numel() // 2
    assert (out_dir / "prune_report.json").exists()


def test_structured_prune_command_saves_a_smaller_model_that_reloads(model_dir, tmp_path, capsys):
    path, text = model_dir
    out_dir = tmp_path / "out"
    assert (
        main(_args(path, text, "--sparsity", "0.5", "--structure", "structured", "--out", str(out_dir))) == 0
    )
    from prunekit.models import load

    model, _tok = load(str(out_dir))
    assert model.model.layers[0].mlp.gate_proj.out_features == 24
    assert model.model.layers[0].self_attn.q_proj.out_features == 16
    assert torch.isfinite(model(torch.tensor([[5, 6, 7]])).logits).all()


def test_bad_arguments_exit_with_a_clear_error(model_dir, capsys):
    path, text = model_dir
    assert main(_args(path, text, "--sparsity", "1.5")) == 2
    assert "sparsity must lie in [0, 1)" in capsys.readouterr().err
    assert main(_args(path, text, "--structure", "2:5")) == 2
    assert "multiple of 5" in capsys.readouterr().err


def test_calibrated_prune_and_eval_compare(model_dir, tmp_path, capsys):
    path, text = model_dir
    out_dir = tmp_path / "wanda"
    assert (
        main(
            _args(
                path,
                text,
                "--method",
                "wanda",
                "--sparsity",
                "0.5",
                "--allocation",
                "owl",
                "--out",
                str(out_dir),
            )
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "JS divergence to dense" in out
    assert (
        main(
            [
                "eval",
                "--model",
                str(path),
                "--compare",
                str(out_dir),
                "--text",
                str(text),
                "--seq-len",
                "32",
                "--eval-windows",
                "3",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "Jensen-Shannon divergence (nats" in out and out.count("perplexity") == 2
    js = float(out.strip().rsplit(" ", 1)[-1])
    assert 0 < js <= 0.6932
