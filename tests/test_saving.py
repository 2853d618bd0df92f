"""prunekit.save_pretrained / from_pretrained: exact round trips of pruned models, plain-loader
behaviour (uniform loads, non-uniform fails loudly) and tampered directories that must not load."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import examples, make_byte_tokenizer, make_tiny_llama, make_tiny_mamba, make_tiny_mamba2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

import prunekit
from prunekit.io import MASKS_FILE, SPARSITY_FILE, CheckpointError, from_pretrained, load_masks

FAMILIES = {"llama": make_tiny_llama, "mamba": make_tiny_mamba, "mamba2": make_tiny_mamba2}


def _ids(seed: int, n: int = 4, length: int = 16, vocab: int = 64) -> torch.Tensor:
    return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def _n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _assert_same_model(a, b, ids) -> None:
    assert torch.equal(_logits(a, ids), _logits(b, ids))
    assert _n_params(a) == _n_params(b)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def _section(path) -> dict:
    return json.loads((path / "config.json").read_text())["prunekit"]


def _rewrite_weights(path, edit) -> None:
    """Apply ``edit`` to the saved tensors (a dict) and write them back, as a tamperer would."""
    file = path / "model.safetensors"
    with safe_open(str(file), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    edit(tensors)
    save_file(tensors, str(file), metadata={"format": "pt"})


def _pruned_llama(tmp_path, search="global", seed=0):
    """FLAP at 30 % global; the uniform search removes one of the two KV groups (50 %), so that every
    layer stays buildable by the plain Llama class (uneven heads per KV group need prunekit's loader)."""
    model = make_tiny_llama(seed)
    report = prunekit.prune(
        model,
        method="flap",
        sparsity=0.5 if search == "uniform" else 0.3,
        structure="structured",
        calibration=_ids(seed),
        structure_search=search,
        gqa="groups" if search == "uniform" else None,
    )
    path = prunekit.save_pretrained(model, tmp_path / "saved", report=report)
    return model, path


# ------------------------------------------------------------------------------ SmolLM2 round trip
def test_smollm2_flap_non_uniform_round_trip_is_bit_identical(smollm2, tmp_path):
    from prunekit.data import calibration_ids

    model, tok = copy.deepcopy(smollm2[0]), smollm2[1]
    ids = calibration_ids(tok, n_samples=8, seq_len=64)
    report = prunekit.prune(model, method="flap", sparsity=0.2, structure="structured", calibration=ids)
    layers = model.config.prunekit_layers
    assert len({d["mlp"]["intermediate_size"] for d in layers}) > 1, (
        "global search should give non-uniform blocks"
    )
    assert model.config.prunekit_added_biases

    path = prunekit.save_pretrained(
        model, tmp_path / "flap", tokenizer=tok, record={"calibration": "docs"}, report=report
    )
    section = _section(path)
    assert section["layers"] == layers and section["plain_loadable"] is False
    assert section["records"][0]["method"] == "flap" and section["records"][0]["calibration"] == "docs"

    reloaded = prunekit.from_pretrained(path)
    _assert_same_model(model, reloaded, ids[:2, :32])
    assert reloaded.config.prunekit_layers == layers
    assert reloaded.config.prunekit_added_biases == model.config.prunekit_added_biases

    via_models, tok2 = prunekit.models.load(str(path))  # what `prunekit eval --compare DIR` does
    assert torch.equal(_logits(via_models, ids[:1, :16]), _logits(model, ids[:1, :16]))
    assert tok2("def f(): pass")["input_ids"] == tok("def f(): pass")["input_ids"]

    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        AutoModelForCausalLM.from_pretrained(path)


# ------------------------------------------------------------------------------ tiny families
@settings(
    max_examples=examples(8), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    family=st.sampled_from(sorted(FAMILIES)),
    method=st.sampled_from(["flap", "wanda-sp"]),
    search=st.sampled_from(["global", "uniform"]),
    sparsity=st.sampled_from([0.2, 0.35, 0.5]),
    seed=st.integers(0, 3),
)
def test_structured_round_trip_is_bit_identical(tmp_path_factory, family, method, search, sparsity, seed):
    model = FAMILIES[family](seed)
    prunekit.prune(
        model,
        method=method,
        sparsity=sparsity,
        structure="structured",
        calibration=_ids(seed),
        structure_search=search,
    )
    config_before = model.config.to_dict()
    path = prunekit.save_pretrained(model, tmp_path_factory.mktemp("rt"))
    config_after = model.config.to_dict()
    for key in ("architectures", "dtype"):  # transformers' own save_pretrained fills these in
        config_before.pop(key), config_after.pop(key)
    assert config_after == config_before  # prunekit's temporary saved values are all undone
    reloaded = from_pretrained(path)
    _assert_same_model(model, reloaded, _ids(seed + 10, n=2, length=12))
    # a small ratio may remove nothing (Mamba-2 needs equal heads per group), so no per-layer list
    assert getattr(reloaded.config, "prunekit_layers", None) == getattr(model.config, "prunekit_layers", None)
    assert getattr(reloaded.config, "prunekit_added_biases", []) == getattr(
        model.config, "prunekit_added_biases", []
    )
    assert not any(p.suffix in {".bin", ".pt", ".pth", ".pkl"} for p in path.iterdir())


def test_mamba_and_mamba2_non_uniform_reload_and_plain_loader_refuses(tmp_path):
    for name in ("mamba", "mamba2"):
        model = FAMILIES[name](0)
        prunekit.prune(model, method="flap", sparsity=0.3, structure="structured", calibration=_ids(0))
        path = prunekit.save_pretrained(model, tmp_path / name)
        _assert_same_model(model, from_pretrained(path), _ids(5, n=2, length=12))
        with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
            AutoModelForCausalLM.from_pretrained(path)


def test_resaving_a_reloaded_model_keeps_its_sizes_and_history(tmp_path):
    model, path = _pruned_llama(tmp_path)
    again = prunekit.save_pretrained(from_pretrained(path), tmp_path / "again")
    first, second = _section(path), _section(again)
    assert second["layers"] == first["layers"] and second["records"] == first["records"]
    assert second["base_fields"] == first["base_fields"]
    _assert_same_model(model, from_pretrained(again), _ids(3))
    half = from_pretrained(again, torch_dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}


# ------------------------------------------------------------------------------ unstructured
def test_two_four_model_keeps_exactly_its_zeros_and_masks(tmp_path):
    model = make_tiny_llama(0)
    report = prunekit.prune(model, method="wanda", structure="2:4", calibration=_ids(0))
    path = prunekit.save_pretrained(model, tmp_path / "nm", report=report)
    reloaded = from_pretrained(path)
    _assert_same_model(model, reloaded, _ids(1))
    params = dict(reloaded.named_parameters())
    masks = load_masks(path)
    assert masks.keys() == report.masks.keys()
    table = json.loads((path / SPARSITY_FILE).read_text())
    for name, mask in report.masks.items():
        assert torch.equal(masks[name], mask) and masks[name].dtype == torch.bool
        assert torch.equal(params[name] == 0, dict(model.named_parameters())[name] == 0)
        assert bool((params[name][mask] == 0).all())
        assert table[name]["structure"] == "2:4" and table[name]["masked"] == mask.numel() // 2
        assert table[name]["masked_nonzero"] == 0
    assert (path / MASKS_FILE).is_file() and _section(path)["masks"] == MASKS_FILE
    plain = AutoModelForCausalLM.from_pretrained(path)  # no shape changed: plain loaders work too
    assert torch.equal(_logits(plain, _ids(1)), _logits(model, _ids(1)))


# ------------------------------------------------------------------------------ plain loader
def test_uniform_llama_loads_with_plain_automodel(tmp_path):
    model = make_tiny_llama(0)
    prunekit.prune(
        model,
        method="wanda-sp",
        sparsity=0.5,
        structure="structured",
        calibration=_ids(0),
        bias_compensation=False,
        gqa="groups",  # whole KV groups: every layer keeps equal groups, so the class can build it
    )
    path = prunekit.save_pretrained(model, tmp_path / "u")
    config = json.loads((path / "config.json").read_text())
    first = model.config.prunekit_layers[0]
    fields = {k: v for k, v in first["attention"].items() if k != "kv_group_sizes"} | first["mlp"]
    assert all(config[k] == v for k, v in fields.items())
    assert _section(path)["plain_loadable"] is True
    plain = AutoModelForCausalLM.from_pretrained(path)
    assert torch.equal(_logits(plain, _ids(1)), _logits(model, _ids(1)))


def test_uniform_with_added_biases_loads_exactly_with_both_loaders(tmp_path):
    model, path = _pruned_llama(tmp_path, search="uniform")
    added = model.config.prunekit_added_biases
    assert added and _section(path)["plain_loadable"] is True
    config = json.loads((path / "config.json").read_text())
    assert config["attention_bias"] is True and config["mlp_bias"] is True  # flags carry the biases
    plain = AutoModelForCausalLM.from_pretrained(path)
    assert torch.equal(_logits(plain, _ids(1)), _logits(model, _ids(1)))
    ours = from_pretrained(path)
    _assert_same_model(model, ours, _ids(1))  # the zero companions are dropped again
    assert ours.config.attention_bias is False and ours.config.mlp_bias is False


def test_plain_loader_fails_where_it_would_lose_a_bias_or_cannot_build(tmp_path):
    # Mamba v1: FLAP compensates x_proj, whose bias no config flag creates
    mamba = make_tiny_mamba(0)
    prunekit.prune(
        mamba,
        method="flap",
        sparsity=0.3,
        structure="structured",
        calibration=_ids(0),
        structure_search="uniform",
    )
    assert any(n.endswith("x_proj") for n in mamba.config.prunekit_added_biases)
    path = prunekit.save_pretrained(mamba, tmp_path / "mamba")
    assert _section(path)["plain_loadable"] is False
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        AutoModelForCausalLM.from_pretrained(path)
    _assert_same_model(mamba, from_pretrained(path), _ids(2))


def test_mamba2_uniform_plain_only_when_expand_can_express_it(tmp_path):
    for sparsity, plain in ((0.5, True), (0.25, False)):  # 4 heads x 4 = hidden 16; 6 x 4 = 24 is not
        model = make_tiny_mamba2(0)
        prunekit.prune(
            model,
            method="wanda-sp",
            sparsity=sparsity,
            structure="structured",
            calibration=_ids(0),
            structure_search="uniform",
            bias_compensation=False,
        )
        path = prunekit.save_pretrained(model, tmp_path / f"m2-{sparsity}")
        assert _section(path)["plain_loadable"] is plain
        if plain:
            loaded = AutoModelForCausalLM.from_pretrained(path)
            assert torch.equal(_logits(loaded, _ids(1)), _logits(model, _ids(1)))
        else:
            with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
                AutoModelForCausalLM.from_pretrained(path)
        _assert_same_model(model, from_pretrained(path), _ids(1))


# ------------------------------------------------------------------------------ tampering
def test_a_reshaped_tensor_is_named(tmp_path):
    """Inside a block part, the part says which projections disagree; elsewhere both shapes are named."""
    _model, path = _pruned_llama(tmp_path)
    for name, message in [
        (
            "model.layers.1.mlp.gate_proj.weight",
            r"layers\.1\.mlp: gate_proj has \d+ output channels for down_proj",
        ),
        ("model.layers.0.self_attn.k_proj.weight", r"layers\.0\.self_attn: k_proj has \d+ output channels"),
        ("model.norm.weight", r"model\.norm\.weight: the checkpoint holds shape \[31\]"),
    ]:
        _model, path = _pruned_llama(tmp_path / name)

        def shrink(t, name=name):
            t[name] = t[name][:-1].clone()

        _rewrite_weights(path, shrink)
        with pytest.raises(CheckpointError, match=message):
            from_pretrained(path)


def test_a_missing_or_extra_tensor_is_named(tmp_path):
    model, path = _pruned_llama(tmp_path)
    bias = model.config.prunekit_added_biases[0] + ".bias"
    _rewrite_weights(path, lambda t: t.pop(bias))
    with pytest.raises(CheckpointError, match=bias.replace(".", r"\.") + ": missing from the checkpoint"):
        from_pretrained(path)

    _model, path = _pruned_llama(tmp_path / "b")
    _rewrite_weights(path, lambda t: t.update({"model.layers.0.mlp.up_proj.bias": torch.zeros(3)}))
    with pytest.raises(
        CheckpointError, match=r"model\.layers\.0\.mlp\.up_proj\.bias: in the checkpoint but not"
    ):
        from_pretrained(path)


def test_a_config_that_disagrees_with_the_weights_is_refused(tmp_path):
    model, path = _pruned_llama(tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["prunekit"]["layers"][0]["mlp"]["intermediate_size"] += 1
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"layer 0: recorded sizes .*the checkpoint's shapes give"):
        from_pretrained(path)

    config["prunekit"]["layers"][0]["mlp"]["intermediate_size"] -= 1
    config["prunekit"]["layers"][1]["attention"]["num_key_value_heads"] = (
        3  # 2 or 4 query heads do not split in 3
    )
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="layer 1"):
        from_pretrained(path)

    del config["prunekit"]["layers"][1]["mlp"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=r"layer 1: sizes must be recorded for the parts \['attention', 'mlp'\]"
    ):
        from_pretrained(path)


def test_a_directory_with_flat_per_layer_sizes_still_loads(tmp_path):
    """Directories written before sizes were recorded per part kind hold one flat dict per block."""
    model, path = _pruned_llama(tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["prunekit"]["layers"] = [
        {k: v for sizes in record.values() for k, v in sizes.items()}
        for record in config["prunekit"]["layers"]
    ]
    (path / "config.json").write_text(json.dumps(config))
    reloaded = from_pretrained(path)
    assert reloaded.config.prunekit_layers == model.config.prunekit_layers
    assert torch.equal(_logits(reloaded, _ids(1)), _logits(model, _ids(1)))


def test_a_nonzero_companion_bias_is_refused(tmp_path):
    _model, path = _pruned_llama(tmp_path, search="uniform")
    name = _section(path)["zero_biases"][0]
    _rewrite_weights(path, lambda t: t[name].fill_(0.5))
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.") + ": recorded as a zero bias"):
        from_pretrained(path)


# ------------------------------------------------------------------------------ bad inputs
def test_bad_inputs_raise_before_anything_is_written(tmp_path):
    model = make_tiny_llama(0)
    target = tmp_path / "never"
    with pytest.raises(ValueError, match="mask for 'model.layers.0.mlp.up_proj.weight' has shape"):
        prunekit.save_pretrained(
            model, target, masks={"model.layers.0.mlp.up_proj.weight": torch.zeros(2, dtype=bool)}
        )
    with pytest.raises(ValueError, match="no such parameter"):
        prunekit.save_pretrained(model, target, masks={"nope.weight": torch.zeros(2, dtype=bool)})
    with pytest.raises(TypeError, match="JSON"):
        prunekit.save_pretrained(model, target, record={"when": object()})
    with pytest.raises(TypeError, match="record/report"):
        prunekit.save_pretrained(model, target, record=42)
    assert not target.exists()
    with pytest.raises(ValueError, match="no config.json"):
        from_pretrained(tmp_path)


# ------------------------------------------------------------------------------ CLI
def test_cli_prune_out_then_eval_compare(tmp_path, capsys):
    from prunekit.cli import main

    src = tmp_path / "tiny"
    model = make_tiny_llama(1)
    model.config.vocab_size = 300
    model.resize_token_embeddings(300)
    model.save_pretrained(src)
    make_byte_tokenizer().save_pretrained(src)
    text = tmp_path / "text.txt"
    text.write_text("Pruning removes weights that matter least. " * 300)
    out = tmp_path / "out"
    common = ["--text", str(text), "--seq-len", "32", "--eval-windows", "2"]
    args = [
        "prune",
        "--model",
        str(src),
        "--method",
        "flap",
        "--structure",
        "structured",
        "--sparsity",
        "0.3",
    ]
    assert main([*args, "--calib-samples", "2", "--out", str(out), *common]) == 0
    section = _section(out)
    assert section["records"][0]["calibration"] == str(text) and section["plain_loadable"] is False
    assert main(["eval", "--model", str(src), "--compare", str(out), *common]) == 0
    assert "Jensen-Shannon divergence" in capsys.readouterr().out
