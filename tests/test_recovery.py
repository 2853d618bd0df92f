"""PERP recovery: pruned zeros survive every variant and structure, merges are exact, reconstruction
lowers every block's error, bad inputs leave the model unchanged."""

from __future__ import annotations

import copy
import importlib

import pytest
import torch
from conftest import examples, make_tiny_llama, make_tiny_mamba, make_tiny_mamba2
from hypothesis import given, settings
from hypothesis import strategies as st

import prunekit
from prunekit.engine.recovery import optim as recovery_optim
from prunekit.engine.recovery.trainable import choose
from prunekit.families import get_adapter
from prunekit.families.norms import find_norms, is_norm
from prunekit.methods.lora import LowRank
from prunekit.spec import SpecError
from prunekit.spec.recovery import build_recovery_spec

pytestmark = pytest.mark.usefixtures("one_thread")

MAKERS = {"llama": make_tiny_llama, "mamba": make_tiny_mamba, "mamba2": make_tiny_mamba2}
#: a large learning rate and a few steps: every update moves far from its start
FAST = {"steps": 3, "lr": 0.05, "batch_size": 4, "eval_windows": 0}


def _ids(n: int = 8, length: int = 16, seed: int = 0, vocab: int = 64) -> torch.Tensor:
    return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


def _prune(model, structure: str):
    ids = _ids()
    if structure == "structured":
        prunekit.prune(model, "wanda-sp", 0.25, structure="structured", calibration=ids)
    else:
        prunekit.prune(model, "wanda", 0.5, structure=structure, calibration=ids)
    return ids


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@settings(max_examples=examples(24), deadline=None)
@given(
    family=st.sampled_from(sorted(MAKERS)),
    structure=st.sampled_from(["unstructured", "2:4", "structured"]),
    lora=st.sampled_from(["mask", "scale", "plain"]),
    mode=st.sampled_from(["retrain", "reconstruct"]),
    seed=st.integers(0, 2**16),
)
def test_recovery_keeps_every_pruned_zero_and_the_shapes(family, structure, lora, mode, seed):
    model = MAKERS[family](seed % 7)
    dense = copy.deepcopy(model)
    ids = _prune(model, structure)
    zeros = {n: p == 0 for n, p in model.named_parameters() if p.dim() >= 2}
    before = _state(model)
    count = sum(p.numel() for p in model.parameters())
    kwargs = {"dense": dense} if mode == "reconstruct" else {}
    report = prunekit.recover(model, data=ids, mode=mode, lora=lora, rank=2, seed=seed, **FAST, **kwargs)
    assert sum(p.numel() for p in model.parameters()) == count  # nothing grew or shrank
    assert not any("parametrizations" in n for n, _ in model.named_parameters())
    if report.trainable == 0:  # reconstruction kept every block as pruned: none got better
        assert mode == "reconstruct" and all(b["after"] == b["before"] for b in report.blocks.values())
        assert _same(before, _state(model))
    else:
        assert 0 < report.share < 1
        assert not _same(before, _state(model))  # recovery changed the model ...
    for name, p in model.named_parameters():
        if name in zeros:  # ... and never a pruned weight
            assert torch.all(p[zeros[name]] == 0), name
    if structure == "2:4":
        for name, mask in zeros.items():
            groups = mask.reshape(-1, 4) if mask.shape[-1] % 4 == 0 else None
            if groups is not None and bool((groups.sum(1) >= 2).all()):  # a 2:4 weight before ...
                p = model.get_parameter(name).detach()
                assert bool(((p.reshape(-1, 4) == 0).sum(1) >= 2).all()), name  # ... and after


@pytest.mark.parametrize("family", sorted(MAKERS))
@pytest.mark.parametrize("kind", ["mask", "scale", "plain"])
def test_merged_model_computes_what_the_adapted_one_did(family, kind):
    model = MAKERS[family](1)
    _prune(model, "unstructured")
    spec = build_recovery_spec(lora=kind, rank=3)
    adapter = get_adapter(model)
    trainables = choose(model, spec, adapter, adapter.layers(model)).attach(0)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in trainables.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
        ids = _ids(2, 12, seed=5)
        adapted = model(ids).logits
        trainables.merge()
        merged = model(ids).logits
    if kind == "plain":  # the merge masks what training did not: the two differ, zeros win
        assert not torch.allclose(adapted, merged, atol=1e-5)
    else:
        torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=0)


def test_tied_head_stays_tied_and_is_trained_once():
    model = make_tiny_llama()
    model.config.tie_word_embeddings = True
    model.tie_weights()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    ids = _prune(model, "unstructured")
    head = model.lm_head.weight.detach().clone()
    report = prunekit.recover(model, data=ids, rank=2, **FAST)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert not torch.equal(head, model.lm_head.weight)
    vocab, hidden = head.shape
    assert report.trainable_by_kind["lm_head"] == 2 * (vocab + hidden)


@pytest.mark.parametrize("family", sorted(MAKERS))
def test_reconstruction_lowers_every_blocks_error_against_the_dense_block(family):
    model = MAKERS[family](2)
    dense = copy.deepcopy(model)
    ids = _prune(model, "unstructured")
    report = prunekit.recover(
        model, dense=dense, data=ids, mode="reconstruct", rank=2, steps=30, lr=5e-3, eval_windows=0
    )
    assert len(report.blocks) == len(get_adapter(model).layers(model))
    for name, errors in report.blocks.items():
        assert errors["after"] < errors["before"], (name, errors)


def test_reconstruction_accepts_biases_that_pruning_created_and_never_worsens_a_block():
    model = make_tiny_llama(5)
    dense = copy.deepcopy(model)
    ids = _ids()
    prunekit.prune(model, "flap", 0.25, calibration=ids)
    assert model.config.prunekit_added_biases  # FLAP's bias compensation made them
    options = {"mode": "reconstruct", "steps": 3, "rank": 2, "eval_windows": 0}
    report = prunekit.recover(model, dense=dense, data=ids, **options)
    for errors in report.blocks.values():
        assert errors["after"] <= errors["before"]


def test_reconstruction_from_a_checkpoint_directory_matches_the_model_in_memory(tmp_path):
    model = make_tiny_llama(3)
    model.save_pretrained(tmp_path / "dense", safe_serialization=True)
    dense = copy.deepcopy(model)
    ids = _prune(model, "unstructured")
    twin = copy.deepcopy(model)
    options = {"data": ids, "mode": "reconstruct", "rank": 2, "steps": 5, "eval_windows": 0}
    a = prunekit.recover(model, dense=dense, **options)
    b = prunekit.recover(twin, dense=str(tmp_path / "dense"), **options)
    assert a.blocks == b.blocks
    assert _same(_state(model), _state(twin))


def test_retraining_on_text_lowers_held_out_perplexity(byte_tokenizer, docs_corpus_file):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    prunekit.prune(model, "magnitude", 0.5)
    report = prunekit.recover(
        model, data=str(docs_corpus_file), tokenizer=byte_tokenizer, seq_len=64, n_samples=64,
        steps=40, lr=5e-3, batch_size=8, eval_windows=4, rank=4,
    )  # fmt: skip
    assert report.perplexity_after < report.perplexity_before
    assert report.losses[-1] < report.losses[0]
    assert report.tokens == 40 * 8 * 64


def test_model_parameters_are_never_trained_directly():
    model = make_tiny_llama()
    ids = _prune(model, "unstructured")
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    prunekit.recover(model, data=ids, **FAST)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())


def test_created_biases_are_trained_recorded_and_survive_a_reload(tmp_path):
    model = make_tiny_llama()
    ids = _prune(model, "unstructured")
    report = prunekit.recover(model, data=ids, train=["biases"], create_biases=True, **FAST)
    added = model.config.prunekit_added_biases
    assert added and report.trainable_by_kind == {"bias": report.trainable}
    assert all(model.get_submodule(n).bias is not None for n in added)
    assert any(bool(model.get_submodule(n).bias.abs().sum() > 0) for n in added)
    prunekit.save_pretrained(model, tmp_path / "out")
    again = prunekit.from_pretrained(tmp_path / "out")
    with torch.no_grad():
        torch.testing.assert_close(again(ids[:2]).logits, model(ids[:2]).logits, atol=1e-6, rtol=0)


def test_bf16_model_trains_fp32_updates_and_keeps_its_dtype(monkeypatch):
    model = make_tiny_llama().to(torch.bfloat16)
    ids = _prune(model, "unstructured")
    zeros = {n: p == 0 for n, p in model.named_parameters() if p.dim() == 2}
    dtypes = []
    real = recovery_optim.optimizer

    def spy(params, spec, steps):
        dtypes.extend(p.dtype for p in params)
        return real(params, spec, steps)

    monkeypatch.setattr(importlib.import_module("prunekit.engine.recovery.retrain"), "optimizer", spy)
    prunekit.recover(model, data=ids, rank=2, **FAST)
    assert dtypes and set(dtypes) == {torch.float32}
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    for name, p in model.named_parameters():
        if name in zeros:
            assert torch.all(p[zeros[name]] == 0)


def test_norms_are_found_by_behaviour_not_by_class():
    class Unheard(torch.nn.Module):  # a normalisation layer no whitelist knows
        def __init__(self, n):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(n))

        def forward(self, x):
            return self.weight * (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True)

    class Scale(torch.nn.Module):  # a 1-D weight that is not a normalisation
        def __init__(self, n):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(n))

        def forward(self, x):
            return self.weight * x

    assert is_norm(Unheard(8)) and not is_norm(Scale(8)) and not is_norm(torch.nn.Linear(8, 8))
    assert is_norm(torch.nn.LayerNorm(8)) and is_norm(torch.nn.RMSNorm(8))
    mamba2 = make_tiny_mamba2()
    assert any(n.endswith("mixer.norm") for n in find_norms(mamba2))  # the gated norm


def test_trainable_sets_are_selectable():
    model = make_tiny_mamba()
    ids = _prune(model, "unstructured")
    spec_kinds = {
        ("norms",): {"norm"},
        ("biases",): {"bias"},
        ("lora",): {"lora"},
        ("lm_head",): {"lm_head"},
        ("norms", "lora"): {"norm", "lora"},
    }
    for train, kinds in spec_kinds.items():
        ranks = {"rank": 2} if {"lora", "lm_head"} & set(train) else {}
        report = prunekit.recover(copy.deepcopy(model), data=ids, train=list(train), **ranks, **FAST)
        assert set(report.trainable_by_kind) == kinds, train


def _unchanged_after(model, error, **kwargs) -> str:
    before = _state(model)
    with pytest.raises(error) as info:
        prunekit.recover(model, **kwargs)
    assert _same(before, _state(model))
    assert not any("parametrizations" in n for n, _ in model.named_parameters())
    return str(info.value)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"rank": 40}, "exceeds the dimensions"),
        ({"lora_targets": "no_such_proj"}, "no_such_proj"),
        ({"train": ["biases"]}, "no module here has a bias"),
        ({"train": ["weights"]}, "not trainable sets"),
        ({"mode": "reconstruct", "train": ["lm_head"]}, "lm_head lies outside the blocks"),
        ({"mode": "reconstruct"}, "pass dense="),
        ({"mode": "finetune"}, "recovery mode"),
        ({"lora": "scale", "alpha": 8}, "ScaleLoRA"),
        ({"train": ["norms"], "rank": 4}, "train has no 'lora'"),
        ({"steps": 3, "tokens": 100}, "not both"),
        ({"lr": 0}, "lr must lie in"),
        ({"learning_rate": 1e-3}, "unknown recovery option"),
        ({"method": "sft"}, "unknown recovery method"),
        ({"data": torch.full((2, 8), 999)}, "vocabulary"),
        ({"data": "/no/such/file.txt"}, "neither 'default' nor an existing text file"),
        ({"dense": "somewhere"}, "retraining does not use it"),
        ({"eval_data": "default", "eval_windows": 0}, "measures nothing"),
    ],
)
def test_bad_input_is_named_and_leaves_the_model_unchanged(options, words):
    model = make_tiny_llama()
    ids = _prune(model, "unstructured")
    options = {"data": ids, **options}
    assert words in _unchanged_after(model, ValueError, **options)


def test_text_shorter_than_one_window_is_refused(byte_tokenizer, tmp_path):
    model = make_tiny_llama()
    short = tmp_path / "short.txt"
    short.write_text("too short", encoding="utf-8")
    message = _unchanged_after(model, ValueError, data=str(short), tokenizer=byte_tokenizer, seq_len=64)
    assert "fewer than one window" in message and "recovery data" in message


def test_dense_reference_of_another_shape_is_refused():
    model = make_tiny_llama()
    ids = _prune(model, "unstructured")
    message = _unchanged_after(model, ValueError, data=ids, mode="reconstruct", dense=make_tiny_mamba())
    assert "dense reference" in message
    narrower = make_tiny_llama()
    narrower.model.layers[1].mlp.up_proj.weight = torch.nn.Parameter(torch.zeros(40, 32))
    message = _unchanged_after(model, ValueError, data=ids, mode="reconstruct", dense=narrower)
    assert "up_proj" in message and "[48, 32]" in message


@pytest.mark.parametrize("mode", ["retrain", "reconstruct"])
def test_interrupt_half_way_leaves_the_model_bit_identical(monkeypatch, mode):
    model = make_tiny_llama()
    dense = copy.deepcopy(model)
    ids = _prune(model, "unstructured")
    calls = {"n": 0}
    real = recovery_optim.step

    def interrupt(*args):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(importlib.import_module(f"prunekit.engine.recovery.{mode}"), "step", interrupt)
    kwargs = {"dense": dense} if mode == "reconstruct" else {}
    _unchanged_after(model, KeyboardInterrupt, data=ids, mode=mode, **{**FAST, "steps": 6}, **kwargs)
    assert calls["n"] == 4


def test_structured_model_trains_on_its_new_shapes():
    model = make_tiny_llama()
    _prune(model, "structured")
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    spec = build_recovery_spec(rank=2)
    adapter = get_adapter(model)
    trainables = choose(model, spec, adapter, adapter.layers(model)).attach(0)
    lows = [u for slot, u in trainables.updates if isinstance(u, LowRank) and "up_proj" in slot.name]
    assert lows and lows[0].b.shape[0] == shapes["model.layers.0.mlp.up_proj.weight"][0]
    trainables.discard()


def test_spec_defaults_follow_the_mode():
    retrain, rebuild = build_recovery_spec(), build_recovery_spec(mode="reconstruct")
    assert "lm_head" in retrain.train and "lm_head" not in rebuild.train
    assert retrain.alpha == 2 * retrain.rank and retrain.scaling == 2.0
    assert retrain.steps_for(20) == 3 and build_recovery_spec(tokens=4096).steps_for(20) == 2
    with pytest.raises(SpecError):
        build_recovery_spec(rank=0)


def test_plain_lora_adapters_load_in_peft_and_compute_the_adapted_model(tmp_path):
    peft = pytest.importorskip("peft")
    from safetensors.torch import load_file

    model = make_tiny_llama(4)
    ids = _prune(model, "unstructured")
    pruned = copy.deepcopy(model)
    out = tmp_path / "adapters"
    options = {"lora": "plain", "train": ["lora"], "rank": 2, **FAST}
    prunekit.recover(model, data=ids, save_adapters=out, **options)
    adapted = copy.deepcopy(pruned)  # what the adapters compute: W + (α/r) B A, unmasked
    tensors = load_file(str(out / "adapter_model.safetensors"))
    with torch.no_grad():
        for key, a in tensors.items():
            if key.endswith("lora_A.weight"):
                name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
                b = tensors[key.replace("lora_A", "lora_B")]
                adapted.get_submodule(name).weight.add_(2.0 * (b @ a))  # alpha / r = 4 / 2
        loaded = peft.PeftModel.from_pretrained(copy.deepcopy(pruned), str(out)).eval()
        torch.testing.assert_close(loaded(ids[:2]).logits, adapted(ids[:2]).logits, atol=1e-5, rtol=0)
    assert len(tensors) == 2 * 14  # 7 Linears per block, 2 blocks, A and B each


@pytest.mark.parametrize(
    "options", [{"lora": "mask", "train": ["lora"]}, {"lora": "plain"}, {"mode": "reconstruct"}]
)
def test_adapters_peft_cannot_hold_are_refused_before_training(tmp_path, options):
    model = make_tiny_llama()
    ids = _prune(model, "unstructured")
    kwargs = {"dense": copy.deepcopy(model), "lora": "plain", "train": ["lora"]} if "mode" in options else {}
    message = _unchanged_after(
        model, ValueError, data=ids, save_adapters=tmp_path / "a", **{**kwargs, **options}
    )
    assert "save_adapters" in message and not (tmp_path / "a").exists()


@pytest.mark.parametrize("mode", ["retrain", "reconstruct"])
def test_recovery_figure_is_written(tmp_path, mode):
    from prunekit.experiments.recovery_plot import plot_recovery

    model = make_tiny_llama()
    dense = copy.deepcopy(model)
    ids = _prune(model, "unstructured")
    kwargs = {"dense": dense} if mode == "reconstruct" else {}
    report = prunekit.recover(model, data=ids, mode=mode, **FAST, **kwargs)
    path = plot_recovery(report, tmp_path / "r.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report.to_dict()["trainable"] == report.trainable and str(report).startswith("recovery perp")
