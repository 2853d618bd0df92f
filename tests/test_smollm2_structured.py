"""Structured pruning of the real SmolLM2-135M: FLAP against its baselines, bias compensation."""

from __future__ import annotations

import copy

import pytest
import torch

import prunekit
from prunekit.data import calibration_ids, eval_windows
from prunekit.eval import perplexity

pytestmark = pytest.mark.slow


def _attn_mlp_weights(model) -> int:
    return sum(
        p.numel()
        for n, p in model.named_parameters()
        if ".layers." in n and ("self_attn" in n or ".mlp." in n) and n.endswith("weight")
    )


@pytest.fixture(scope="module")
def setup(smollm2):
    model, tok = smollm2
    return (
        model,
        tok,
        calibration_ids(tok, n_samples=16, seq_len=128),
        eval_windows(tok, seq_len=256, max_windows=6),
    )


def test_flap_at_twenty_percent_beats_its_baselines_and_still_generates(setup):
    model, tok, calibration, windows = setup
    ppl = {}
    for method in ("flap", "wanda-sp", "magnitude-sp"):
        pruned = copy.deepcopy(model)
        prunekit.prune(pruned, method=method, sparsity=0.2, structure="structured", calibration=calibration)
        if method == "flap":  # AL-AM: a parameter ratio over attention + MLP weights
            drop = 1 - _attn_mlp_weights(pruned) / _attn_mlp_weights(model)
            assert drop == pytest.approx(0.2, abs=0.01)
            heads = {layer.self_attn.q_proj.out_features // 64 for layer in pruned.model.layers}
            widths = {layer.mlp.gate_proj.out_features for layer in pruned.model.layers}
            assert len(heads) > 1 or len(widths) > 1  # the global threshold spreads removals unevenly
            ids = tok("def main():", return_tensors="pt").input_ids
            out = pruned.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
            assert out.shape[1] == ids.shape[1] + 6
        ppl[method] = perplexity(pruned, windows)
        del pruned
    assert ppl["flap"] < ppl["wanda-sp"] < ppl["magnitude-sp"]


def test_bias_compensation_lowers_every_output_projection_error(setup):
    model, _tok, calibration, _windows = setup
    calib = calibration[:6]
    inputs: dict[str, list] = {}
    handles = []
    for i, layer in enumerate(model.model.layers):
        for proj in (layer.self_attn.o_proj, layer.mlp.down_proj):
            name = f"{i}.{'o' if proj is layer.self_attn.o_proj else 'down'}"
            handles.append(
                proj.register_forward_pre_hook(
                    lambda _m, a, name=name: inputs.setdefault(name, []).append(
                        a[0].detach().reshape(-1, a[0].shape[-1])
                    )
                )
            )
    with torch.no_grad():
        model(calib)
    for h in handles:
        h.remove()
    pruned = {}
    for compensate in (False, True):
        pruned[compensate] = copy.deepcopy(model)
        prunekit.prune(
            pruned[compensate],
            method="flap",
            sparsity=0.3,
            structure="structured",
            calibration=calib,
            bias_compensation=compensate,
            mode="soft",
        )
    checked = 0
    for i in range(len(model.model.layers)):
        for key, attr in (("o", "self_attn.o_proj"), ("down", "mlp.down_proj")):
            x = torch.cat(inputs[f"{i}.{key}"])
            dense = model.model.layers[i].get_submodule(attr)
            want = dense(x)
            err = {}
            for compensate, m in pruned.items():
                proj = m.model.layers[i].get_submodule(attr)
                kept = proj.weight.abs().sum(0) > 0
                if bool(kept.all()):
                    break
                with torch.no_grad():
                    err[compensate] = float(((proj(x * kept) - want) ** 2).sum())
            if len(err) == 2:
                assert err[True] < err[False], f"layer {i} {attr}"
                checked += 1
    assert checked >= 30


def _block_linear(model) -> int:
    return sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear))


def test_uniform_wanda_sp_takes_the_reference_budget_and_round_trips(setup, tmp_path):
    """20 % uniform: int(9 * 0.2) = 1 query head, no KV head and int(1536 * 0.2) = 307 MLP channels in
    every layer (17.1 % of the block Linear weights), hard-removed with uneven KV groups; the model
    generates with a cache and reloads exactly."""
    model, tok, calibration, _windows = setup
    pruned = copy.deepcopy(model)
    report = prunekit.prune(pruned, method="wanda-sp", sparsity=0.2, calibration=calibration)
    for layer in pruned.model.layers:
        assert layer.self_attn.q_proj.out_features == 8 * 64
        assert layer.self_attn.k_proj.out_features == layer.self_attn.v_proj.out_features == 3 * 64
        assert layer.mlp.gate_proj.out_features == 1536 - 307
        assert sorted(layer.self_attn.prunekit_kv_group_sizes) == [2, 3, 3]
    assert 1 - _block_linear(pruned) / _block_linear(model) == pytest.approx(0.171, abs=0.0005)
    assert report.unit_totals == {"attention": (270, 240), "mlp": (46080, 36870)}
    ids = tok("def main():", return_tensors="pt").input_ids
    out = pruned.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
        output_logits=True, return_dict_in_generate=True,
    )  # fmt: skip
    with torch.no_grad():
        full = pruned(out.sequences[:, :-1]).logits[:, ids.shape[1] - 1 :]
    torch.testing.assert_close(torch.stack(out.logits, 1), full, atol=1e-4, rtol=1e-4)
    path = prunekit.save_pretrained(pruned, tmp_path / "wsp")
    reloaded = prunekit.from_pretrained(path)
    with torch.no_grad():
        assert torch.equal(reloaded(out.sequences).logits, pruned(out.sequences).logits)


def test_flap_al_am_removes_the_requested_share_of_block_weights(setup):
    model, _tok, calibration, _windows = setup
    pruned = copy.deepcopy(model)
    report = prunekit.prune(pruned, method="flap", sparsity=0.2, calibration=calibration)
    share = 1 - _block_linear(pruned) / _block_linear(model)
    assert 0.19 <= share <= 0.2 + 1e-9
    kept = report.unit_totals
    assert kept["attention"][1] < 270 and kept["mlp"][1] < 46080  # the threshold takes both kinds
