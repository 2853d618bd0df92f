"""Families beyond Llama and Mamba: blocks found wherever they live, Conv1D weights, hybrids, refusals."""

from __future__ import annotations

import copy

import family_configs
import pytest
import torch
import transformers

import prunekit
from prunekit.families import UnsupportedFamilyError, find_blocks, get_adapter


def _tiny(config_cls, **kw):
    torch.manual_seed(0)
    base = dict(vocab_size=96, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return transformers.AutoModelForCausalLM.from_config(config_cls(**base, **kw)).eval()


def gpt2():
    return _tiny(transformers.GPT2Config, n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=64)


def opt():
    return _tiny(
        transformers.OPTConfig, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
        word_embed_proj_dim=32, max_position_embeddings=64,
    )  # fmt: skip


def bamba():
    return _tiny(
        transformers.BambaConfig, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, attn_layer_indices=[1], mamba_n_heads=8, mamba_d_head=8,
        mamba_n_groups=1, mamba_d_state=8, mamba_expand=2, mamba_chunk_size=16,
    )  # fmt: skip


IDS = torch.randint(3, 90, (4, 16), generator=torch.Generator().manual_seed(1))


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "build, where", [(gpt2, "transformer.h"), (opt, "model.decoder.layers"), (bamba, "model.layers")]
)
def test_blocks_are_found_wherever_the_family_keeps_them(build, where):
    names = [name for name, _block in find_blocks(build())]
    assert names == [f"{where}.0", f"{where}.1"]


def test_a_model_without_blocks_is_refused_by_name():
    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

    with pytest.raises(UnsupportedFamilyError, match="cannot find the blocks of Flat"):
        find_blocks(Flat())


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_conv1d_weights_are_pruned_unstructured(method):
    """GPT-2 stores its projections [in, out] (transformers' Conv1D): each is pruned as its [out, in]."""
    model = gpt2()
    report = prunekit.prune(model, method=method, sparsity=0.5, calibration=IDS)
    conv = [n for n, m in model.named_modules() if type(m).__name__ == "Conv1D"]
    assert conv and {f"{n}.weight" for n in conv} <= set(report.masks)
    for name in conv:
        weight = model.get_submodule(name).weight
        assert torch.equal(report.masks[f"{name}.weight"], weight == 0), name
        if method == "wanda":  # per output row: a column of the stored weight
            assert torch.all((weight == 0).sum(dim=0) == weight.shape[0] // 2), name
        else:
            assert (weight == 0).float().mean().item() == pytest.approx(0.5, abs=0.01), name


@pytest.mark.parametrize("method", ["wanda-sp", "flap"])
def test_conv1d_consumers_score_and_compensate(method):
    """Structured scorers read GPT-2's c_proj rows (its inputs); FLAP's bias compensation writes its bias."""
    model = gpt2()
    report = prunekit.prune(model, method=method, sparsity=0.3, structure="structured", calibration=IDS)
    layers = model.config.prunekit_layers
    if method == "wanda-sp":  # a uniform share of every group (FLAP's global search may spare some)
        assert all(rec["mlp"]["intermediate_size"] < 64 for rec in layers)
        assert all(rec["attention"]["num_attention_heads"] < 4 for rec in layers)
    if (
        method == "flap"
    ):  # bias compensation on by default: each consumer that lost inputs absorbed their mean
        cut = {f"transformer.{group.split()[0]}.c_proj" for group, units in report.removed.items() if units}
        assert cut and cut == set(report.compensated)
    with torch.no_grad():
        assert torch.isfinite(model(IDS).logits).all()


def test_a_hybrid_prunes_attention_ssm_heads_and_mlp_in_one_call(tmp_path):
    model = bamba()
    prunekit.prune(model, method="wanda-sp", sparsity=0.5, structure="structured", calibration=IDS)
    mamba, attention = model.config.prunekit_layers
    assert sorted(mamba) == ["mamba2", "mlp"] and sorted(attention) == ["attention", "mlp"]
    assert mamba["mamba2"]["num_heads"] < 8
    assert attention["attention"]["num_attention_heads"] < 4
    assert mamba["mlp"]["intermediate_size"] < 64 and attention["mlp"]["intermediate_size"] < 64
    prunekit.save_pretrained(model, tmp_path)
    reloaded = prunekit.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(reloaded(IDS).logits, model(IDS).logits)


@pytest.mark.parametrize("model_type", ["deepseek_v3", "hunyuan_v1_moe"])
def test_structured_pruning_of_a_family_without_adapter_is_refused_untouched(model_type):
    model = family_configs.build(model_type)
    before = _state(model)
    with pytest.raises(UnsupportedFamilyError, match=rf"'{model_type}'.*mixture-of-experts"):
        prunekit.prune(model, method="wanda-sp", sparsity=0.3, structure="structured", calibration=IDS)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not prunekit.support(model.config).supported


def test_support_names_the_adapter_of_a_composed_family():
    assert prunekit.support(gpt2().config) == prunekit.families.Support("gpt2", "gpt2", None)
    adapter = get_adapter(opt())
    assert [p.kind for p in adapter.parts] == ["attention", "mlp"]
    assert adapter.default_structured_roles == ("attention", "mlp")


def test_sizes_are_recorded_per_part_kind_and_restated_on_the_modules():
    model = copy.deepcopy(opt())
    prunekit.prune(model, method="wanda-sp", sparsity=0.5, structure="structured", calibration=IDS)
    for block, record in zip(model.model.decoder.layers, model.config.prunekit_layers):
        assert block.self_attn.num_heads == record["attention"]["num_attention_heads"]
        assert block.fc2.in_features == record["mlp"]["intermediate_size"]
