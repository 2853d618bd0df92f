"""Sweeps: every point is a fresh copy pruned exactly as a single run would prune it."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from conftest import make_byte_tokenizer, make_tiny_llama

import prunekit
from prunekit.cli import main
from prunekit.data import calibration_ids, eval_windows
from prunekit.eval import js_divergence, perplexity
from prunekit.experiments.sweep import COLUMNS, structure_for, sweep
from prunekit.methods.scorers import SCORERS
from prunekit.methods.scorers.magnitude import Magnitude
from prunekit.spec import default_structure

TEXT = "Sweeps compare pruning methods at several sparsities on the same text. " * 300
SETTINGS = {"n_samples": 2, "seq_len": 32, "max_eval_windows": 3}


def _tiny(seed: int = 1):
    model = make_tiny_llama(seed)
    model.resize_token_embeddings(300, mean_resizing=False)
    return model


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    return str(path)


class CountingFactory:
    """A model factory that counts how often the sweep asked for the model."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return _tiny(), make_byte_tokenizer()


def _single_run(method, sparsity, text, structure=None):
    """What one ``prunekit prune`` with these settings measures, computed from scratch."""
    dense, tok = _tiny(), make_byte_tokenizer()
    ids = calibration_ids(tok, n_samples=SETTINGS["n_samples"], seq_len=SETTINGS["seq_len"], source=text)
    windows = eval_windows(
        tok, seq_len=SETTINGS["seq_len"], max_windows=SETTINGS["max_eval_windows"], source=text
    )
    model = _tiny()
    report = prunekit.prune(model, method=method, sparsity=sparsity, structure=structure, calibration=ids)
    return (
        report,
        perplexity(model, windows),
        js_divergence(dense, model, windows),
        perplexity(dense, windows),
    )


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)


def test_sweep_rows_equal_single_runs_and_files_are_written(tmp_path, text_file):
    out = tmp_path / "sweep"
    rows = sweep(
        CountingFactory(),
        ["wanda", "wanda-sp"],
        [0.3, 0.6],
        text=text_file,
        out_dir=out,
        progress=False,
        **SETTINGS,
    )
    assert [(r["method"], r["sparsity"]) for r in rows] == [
        ("wanda", 0.3),
        ("wanda", 0.6),
        ("wanda-sp", 0.3),
        ("wanda-sp", 0.6),
    ]
    for row in rows:
        assert list(row) == [*COLUMNS, "layer_sparsity"] and row["error"] == ""
        report, ppl, js, dense_ppl = _single_run(row["method"], row["sparsity"], text_file)
        assert row["structure"] == report.structure
        assert _close(row["ppl"], ppl) and _close(row["js"], js) and _close(row["ppl_dense"], dense_ppl)
        assert row["achieved"] == report.achieved
        assert (row["params_before"], row["params_after"]) == (report.params_before, report.params_after)
    assert {r["structure"] for r in rows if r["method"] == "wanda"} == {"unstructured"}
    assert {r["structure"] for r in rows if r["method"] == "wanda-sp"} == {"structured"}
    assert all(r["params_after"] < r["params_before"] for r in rows if r["method"] == "wanda-sp")

    with open(out / "sweep.csv", newline="") as fh:
        written = list(csv.DictReader(fh))
    assert [(w["method"], float(w["sparsity"])) for w in written] == [
        (r["method"], r["sparsity"]) for r in rows
    ]
    for w, r in zip(written, rows):
        assert float(w["ppl"]) == r["ppl"] and float(w["js"]) == r["js"]  # full precision round trip
    md = (out / "sweep.md").read_text()
    for r in rows:
        assert f"| {r['method']} | {r['structure']} | {r['sparsity']:g} |" in md
        assert f"{r['ppl']:.3f}" in md
    png = (out / "sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_failed_point_is_recorded_and_the_sweep_goes_on(tmp_path, text_file, monkeypatch):
    class Broken(Magnitude):
        name = "broken"

        def weight_scores(self, weight, stats=None):
            raise RuntimeError("scorer exploded")

    monkeypatch.setitem(SCORERS, "broken", Broken)
    out = tmp_path / "sweep"
    rows = sweep(
        CountingFactory(),
        ["broken", "magnitude"],
        [0.5],
        text=text_file,
        out_dir=out,
        progress=False,
        **SETTINGS,
    )
    broken, magnitude = rows
    assert broken["error"] == "RuntimeError: scorer exploded" and broken["ppl"] is None
    # the failure left the shared dense model alone: the next point still equals a fresh single run
    _report, ppl, js, _ = _single_run("magnitude", 0.5, text_file)
    assert magnitude["error"] == "" and _close(magnitude["ppl"], ppl) and _close(magnitude["js"], js)
    with open(out / "sweep.csv", newline="") as fh:
        written = list(csv.DictReader(fh))
    assert written[0]["error"] == "RuntimeError: scorer exploded" and written[0]["ppl"] == ""
    assert "scorer exploded" in (out / "sweep.md").read_text()


@pytest.mark.parametrize(
    ("methods", "sparsities", "kwargs", "message"),
    [
        (["wanda", "nope"], [0.5], {}, "unknown method 'nope'"),
        (["wanda"], [0.5, 1.0], {}, r"sparsity must lie in \[0, 1\)"),
        (["wanda"], [-0.1], {}, r"sparsity must lie in \[0, 1\)"),
        (["wanda"], ["0.5"], {}, "sparsity must be a number"),
        (["sparsegpt", "flap"], [0.5], {"structure": "structured"}, "sparsegpt.*does not support structured"),
        (["wanda"], [0.5], {"structure": "3:2"}, "N:M needs"),
        (["wanda", "magnitude"], [0.5], {"alpha_search": True}, "magnitude.*no option"),
        (["wanda"], [0.5], {"allocation": "random"}, "allocation"),
        ([], [0.5], {}, "methods is empty"),
        (["wanda", "wanda"], [0.5], {}, "duplicates"),
        (["wanda"], [0.5], {"method_options": {"flap": {}}}, "not in the sweep"),
    ],
)
def test_bad_arguments_fail_before_the_model_is_loaded(tmp_path, methods, sparsities, kwargs, message):
    factory = CountingFactory()
    with pytest.raises((ValueError, TypeError), match=message):
        sweep(factory, methods, sparsities, out_dir=tmp_path / "out", progress=False, **kwargs)
    assert factory.calls == 0 and not (tmp_path / "out").exists()


def test_structure_for_reuses_the_default_and_keeps_structured_only_methods_structured():
    for method, cls in SCORERS.items():
        assert structure_for(method, None) == default_structure(method)
        if cls.structures == ("structured",):
            assert structure_for(method, "unstructured") == "structured"
            assert structure_for(method, "2:4") == "structured"
        elif "N:M" in cls.structures:
            assert structure_for(method, "2:4") == "2:4"


def test_method_options_reach_only_their_method(text_file):
    rows = sweep(
        CountingFactory(),
        ["wanda", "magnitude"],
        [0.5],
        text=text_file,
        method_options={"wanda": {"granularity": "matrix"}},
        progress=False,
        **SETTINGS,
    )
    assert all(r["error"] == "" for r in rows)
    dense, tok = _tiny(), make_byte_tokenizer()
    ids = calibration_ids(tok, n_samples=2, seq_len=32, source=text_file)
    windows = eval_windows(tok, seq_len=32, max_windows=3, source=text_file)
    prunekit.prune(dense, method="wanda", sparsity=0.5, calibration=ids, granularity="matrix")
    assert _close(rows[0]["ppl"], perplexity(dense, windows))


def test_cli_sweep_matches_cli_prune(tmp_path, text_file, capsys):
    model_dir = tmp_path / "tiny"
    _tiny().save_pretrained(model_dir)
    make_byte_tokenizer().save_pretrained(model_dir)
    common = ["--model", str(model_dir), "--text", text_file, "--seq-len", "32", "--calib-samples", "2"]
    common += ["--eval-windows", "3"]
    out = tmp_path / "sweep"
    argv = ["sweep", *common, "--methods", "magnitude,flap", "--sparsities", "0.2,0.5", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| flap | structured | 0.5 |" in printed and "4 points (0 failed)" in printed
    with open(out / "sweep.csv", newline="") as fh:
        rows = {(r["method"], r["sparsity"]): r for r in csv.DictReader(fh)}

    single = tmp_path / "single"
    argv = ["prune", *common, "--method", "flap", "--structure", "structured", "--sparsity", "0.5"]
    assert main([*argv, "--out", str(single)]) == 0
    report = json.loads((single / "prune_report.json").read_text())
    row = rows[("flap", "0.5")]
    assert _close(float(row["ppl"]), report["ppl_pruned"]) and _close(float(row["js"]), report["js_nats"])
    assert _close(float(row["ppl_dense"]), report["ppl_dense"])
    assert int(row["params_after"]) == report["params_after"]

    assert main(["sweep", *common, "--methods", "wanda,bogus", "--sparsities", "0.5", "--out", str(out)]) == 2
    assert "unknown method 'bogus'" in capsys.readouterr().err


def test_sweep_leaves_a_passed_model_untouched(text_file):
    model, tok = _tiny(), make_byte_tokenizer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sweep((model, tok), ["magnitude"], [0.5], text=text_file, progress=False, **SETTINGS)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_uneven_allocations_get_a_figure_of_sparsity_by_matrix(tmp_path, text_file):
    out = tmp_path / "sweep"
    rows = sweep(
        CountingFactory(),
        ["wanda", "besa"],
        [0.5],
        text=text_file,
        out_dir=out,
        progress=False,
        method_options={"besa": {"lr": 0.2, "epochs": 3}},
        **SETTINGS,
    )
    assert not any(r["error"] for r in rows)
    besa = next(r for r in rows if r["method"] == "besa")
    shares = besa["layer_sparsity"]
    assert max(shares.values()) - min(shares.values()) > 1e-3
    png = (out / "layers-besa-unstructured-0.5.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("layers-wanda-*"))  # every matrix of a Wanda point has the same share


RETRAIN = {"mode": "retrain", "steps": 8, "rank": 2, "lr": 1e-2, "n_samples": 16, "batch_size": 4}


@pytest.mark.usefixtures("one_thread")
def test_recovered_sweep_adds_finite_columns_and_recovery_lowers_perplexity(tmp_path, text_file):
    from prunekit.experiments.sweep import RECOVERY_COLUMNS

    out = tmp_path / "sweep"
    rows = sweep(
        CountingFactory(), ["magnitude", "wanda-sp"], [0.5], text=text_file, out_dir=out, progress=False,
        recover=RETRAIN, **SETTINGS,
    )  # fmt: skip
    plain = sweep(
        CountingFactory(), ["magnitude", "wanda-sp"], [0.5], text=text_file, progress=False, **SETTINGS
    )
    for row, before in zip(rows, plain):
        assert list(row) == [*COLUMNS, *RECOVERY_COLUMNS, "layer_sparsity"]
        assert row["error"] == "" and row["recovery_error"] == ""
        assert all(math.isfinite(row[k]) for k in ("ppl_recovered", "js_recovered", "recovery_seconds"))
        assert 0 < row["recovery_share"] < 1
        assert _close(row["ppl"], before["ppl"]) and _close(row["js"], before["js"])  # measured before
        assert row["ppl_recovered"] < 0.9 * row["ppl"]

    with open(out / "sweep.csv", newline="") as fh:
        written = list(csv.DictReader(fh))
    assert list(written[0]) == [*COLUMNS, *RECOVERY_COLUMNS]
    assert [float(w["ppl_recovered"]) for w in written] == [r["ppl_recovered"] for r in rows]
    md = (out / "sweep.md").read_text()
    assert "| recovered ppl |" in md and "- recovery: perp retrain (" in md
    for r in rows:
        assert f"| {r['prune_seconds']:.1f} | {r['ppl_recovered']:.3f} |" in md
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.usefixtures("one_thread")
def test_reconstructing_sweep_keeps_pruned_zeros_and_the_dense_model(text_file, monkeypatch):
    from prunekit.experiments import sweep_recovery

    model, tok = _tiny(), make_byte_tokenizer()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []

    def checked_recover(pruned, dense, *args, **kwargs):
        zeros = {n: p == 0 for n, p in pruned.named_parameters() if n.endswith("proj.weight")}
        report = prunekit.recover(pruned, dense, *args, **kwargs)
        params = dict(pruned.named_parameters())
        seen.append((dense is model, all(torch.all(params[n][z] == 0) for n, z in zeros.items())))
        return report

    monkeypatch.setattr(sweep_recovery.api, "recover", checked_recover)
    recover = {"mode": "reconstruct", "steps": 2, "rank": 2, "n_samples": 4}
    rows = sweep(
        (model, tok), ["magnitude"], [0.5], text=text_file, progress=False, recover=recover, **SETTINGS
    )
    assert rows[0]["recovery_error"] == "" and math.isfinite(rows[0]["ppl_recovered"])
    assert seen == [(True, True)]  # reconstructed against the sweep's dense model, zeros kept
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("recover", "message"),
    [
        ({"rank": 0}, "rank must be >= 1"),
        ({"mode": "rebuild"}, "recovery mode must be one of"),
        ({"bogus": 1}, r"unknown recovery option\(s\) \['bogus'\]"),
        ({"mode": "reconstruct", "tokens": 64}, "tokens"),
        ({"eval_windows": 4}, "eval_windows is set by the sweep"),
        ({"method": "nope"}, "unknown recovery method 'nope'"),
        (["mode=retrain"], "recover must be a dict"),
    ],
)
def test_bad_recovery_options_fail_before_the_model_is_loaded(tmp_path, recover, message):
    factory = CountingFactory()
    with pytest.raises((ValueError, TypeError), match=message):
        sweep(factory, ["magnitude"], [0.5], out_dir=tmp_path / "out", progress=False, recover=recover)
    assert factory.calls == 0 and not (tmp_path / "out").exists()


@pytest.mark.usefixtures("one_thread")
def test_cli_sweep_recover_flag(tmp_path, text_file, capsys):
    model_dir = tmp_path / "tiny"
    _tiny().save_pretrained(model_dir)
    make_byte_tokenizer().save_pretrained(model_dir)
    common = [
        "sweep",
        "--model",
        str(model_dir),
        "--text",
        text_file,
        "--seq-len",
        "32",
        "--calib-samples",
        "2",
    ]
    common += ["--eval-windows", "3", "--methods", "magnitude", "--sparsities", "0.5"]
    out = tmp_path / "sweep"
    recover = "mode=retrain,steps=8,rank=2,lr=1e-2,n_samples=16,batch_size=4,train=norms,lora"
    assert main([*common, "--out", str(out), "--recover", recover]) == 0
    assert "recovered ppl" in capsys.readouterr().out
    with open(out / "sweep.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["recovery_error"] == "" and float(row["ppl_recovered"]) < float(row["ppl"])

    bad = tmp_path / "bad"
    assert main([*common, "--out", str(bad), "--recover", "mode=retrain,rank=0"]) == 2
    assert "rank must be >= 1" in capsys.readouterr().err and not bad.exists()
