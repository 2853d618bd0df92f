"""``prunekit study``: every (model, method, sparsity, component) row, plots equal to the CSV,
per-component pruning that touches nothing else, and clear errors for bad inputs before any loading.

Models are the ``micro`` reference configs trained for three steps on a slice of the stdlib docs with one
shared 300-token tokenizer, so the whole module takes well under a minute on one core.
"""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from conftest import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, DistilBertConfig

import prunekit
from prunekit.cli import main
from prunekit.data import default_text
from prunekit.engine.targets import matches
from prunekit.experiments.study import figures, prune_component, read_csv, study
from prunekit.experiments.study.texts import shuffle_words
from prunekit.families import get_adapter
from prunekit.methods.select import budget
from prunekit.refmodels import ARCHS, load_corpus, train_reference, train_tokenizer
from prunekit.refmodels.configs import reference_config

SEQ = 32
METHODS = ["magnitude", "wanda", "flap"]
SPARSITIES = [0.25, 0.5]
SMALL = dict(seq_len=SEQ, n_samples=4, max_eval_windows=3, progress=False)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus_file(docs_corpus_file):
    return docs_corpus_file


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, corpus_file):
    """One micro model per architecture, three training steps, one shared tokenizer."""
    root = tmp_path_factory.mktemp("refs")
    tokenizer = train_tokenizer(load_corpus(corpus_file).tokenizer_text(), vocab_size=300)
    dirs = {}
    for arch in ARCHS:
        dirs[arch] = root / arch
        train_reference(
            arch, dirs[arch], corpus_file, tokenizer=tokenizer, token_budget=3 * 4 * SEQ, size="micro",
            seq_len=SEQ, batch_size=4, eval_windows=2, progress=False,
        )  # fmt: skip
    return dirs


@pytest.fixture(scope="module")
def study_run(model_dirs, corpus_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    sources = [str(model_dirs[a]) for a in ARCHS]
    rows = study(sources, METHODS, SPARSITIES, text=str(corpus_file), out_dir=out, **SMALL)
    return rows, out


def test_csv_has_every_model_method_sparsity_component_row(study_run, model_dirs):
    rows, out = study_run
    expected = set()
    for arch in ARCHS:
        adapter = get_adapter(AutoModelForCausalLM.from_config(reference_config(arch, 300, "micro")))
        names = ["all", *(c.name for c in adapter.components)]
        expected |= set(itertools.product([arch], METHODS, SPARSITIES, names))
    got = [(r["model"], r["method"], r["sparsity"], r["component"]) for r in rows]
    assert len(got) == len(set(got)) and set(got) == expected
    assert read_csv(out / "study.csv") == rows  # full precision round trip
    for row in rows:
        assert row["status"] in ("ok", "n/a", "failed")
        if row["status"] == "ok":
            for text in ("heldout", "shuffled"):
                assert math.isfinite(row[f"ppl_{text}"])
                assert row[f"rel_{text}"] == pytest.approx(row[f"ppl_{text}"] / row[f"dense_ppl_{text}"] - 1)
        else:
            assert row["note"] and row["ppl_heldout"] is None
    by_key = {(r["model"], r["method"], r["component"], r["sparsity"]): r for r in rows}
    # the whole-model point of every method prunes, and structured methods never touch weight-only parts
    assert all(by_key[a, m, "all", s]["status"] == "ok" for a in ARCHS for m in METHODS for s in SPARSITIES)
    assert by_key["mamba", "flap", "in_proj", 0.5]["status"] == "n/a"
    assert by_key["mamba2", "wanda", "ssm_heads", 0.5]["status"] == "n/a"
    assert (
        by_key["llama", "flap", "attention", 0.5]["params_after"]
        < by_key["llama", "flap", "all", 0.5]["params_before"]
    )
    assert (out / "study.md").read_text().count("| flap | ssm_heads |") == 1
    for name in ("study_models.png", "study_llama.png", "study_mamba.png", "study_mamba2.png"):
        assert (out / name).stat().st_size > 1000


def test_plotted_values_equal_the_csv(study_run):
    _rows, out = study_run
    rows = read_csv(out / "study.csv")
    figs = figures(rows, ["heldout", "shuffled"])
    checked = 0
    for name, fig in figs.items():
        for ax in fig.axes:
            method = ax.get_title()
            for line in ax.get_lines()[1:]:  # the first line is the zero reference
                if name == "study_models.png":
                    model, text = line.get_label().rsplit(" ", 1)
                    component = "all"
                else:
                    model, text, component = name[len("study_") : -len(".png")], "heldout", line.get_label()
                want = sorted(
                    (r["sparsity"], r[f"rel_{text}"])
                    for r in rows
                    if (r["model"], r["method"], r["component"], r["status"])
                    == (model, method, component, "ok")
                )
                assert list(zip(line.get_xdata(), line.get_ydata())) == want
                checked += 1
    ok_series = {(r["model"], r["method"], r["component"]) for r in rows if r["status"] == "ok"}
    models_lines = {
        (r["model"], r["method"]) for r in rows if r["status"] == "ok" and r["component"] == "all"
    }
    assert checked == len(ok_series) + 2 * len(models_lines)


def _component_params(model, arch: str, component: str) -> set[str]:
    """Names of the parameters (by module) the component may change."""
    comp = get_adapter(model).component(component)
    if comp.roles:
        graph = prunekit.trace(model)
        params = {m.param for g in graph.groups if g.role in comp.roles for m in g.members}
        return {p.rsplit(".", 1)[0] for p in params}
    return {
        name
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear) and any(matches(name, p) for p in comp.weights)
    }


CASES = [
    ("llama", "attention", "wanda"), ("llama", "mlp", "sparsegpt"), ("llama", "attention", "flap"),
    ("llama", "mlp", "wanda-sp"), ("mamba", "in_proj", "wanda"), ("mamba", "x_proj/dt_proj", "magnitude"),
    ("mamba", "out_proj", "sparsegpt"), ("mamba", "ssm_channels", "flap"), ("mamba", "state", "taylor"),
    ("mamba", "x_proj/dt_proj", "taylor"), ("mamba2", "in_proj", "wanda"),
    ("mamba2", "out_proj", "magnitude"), ("mamba2", "ssm_heads", "flap"), ("mamba2", "state", "taylor"),
]  # fmt: skip


@settings(
    max_examples=examples(20), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=st.sampled_from(CASES), sparsity=st.sampled_from([0.25, 0.5]), seed=st.integers(0, 3))
def test_component_pruning_touches_only_that_component(case, sparsity, seed):
    arch, component, method = case
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(reference_config(arch, 300, "micro")).eval()
    allowed = _component_params(model, arch, component)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(3, 300, (4, 16), generator=torch.Generator().manual_seed(seed))
    report = prune_component(model, component, method, sparsity, calibration=ids)
    after = dict(model.named_parameters())
    changed = set()
    for name, param in after.items():
        module = name.rsplit(".", 1)[0]
        if name not in before or param.shape != before[name].shape or not torch.equal(param, before[name]):
            assert module in allowed, f"{method} on {component} changed {name}"
            changed.add(name)
    # a uniform structured budget is int(n * ratio) units: 25 % of a 2-wide dt rank is none at all
    asked = report.structure != "structured" or report.options.get("structure_search") != "uniform"
    asked = asked or any(budget(n, sparsity) for roles in report.units.values() for n, _ in roles.values())
    assert bool(changed) == asked, f"{method} on {component}: changed {sorted(changed)[:3]}, asked {asked}"
    assert set(before) <= set(after)


def test_shuffled_text_keeps_each_lines_words():
    text = default_text()[:5000]
    shuffled = shuffle_words(text, seed=1)
    assert shuffled == shuffle_words(text, seed=1) and shuffled != text
    for a, b in zip(text.split("\n"), shuffled.split("\n"), strict=True):
        assert sorted(a.split()) == sorted(b.split())


def _no_loading(monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("weights were loaded before the inputs were checked")

    monkeypatch.setattr("prunekit.experiments.study.run._load", refuse)


def test_directory_that_is_not_a_causal_lm(tmp_path, model_dirs, monkeypatch):
    _no_loading(monkeypatch)
    encoder = tmp_path / "distilbert"
    DistilBertConfig(dim=32, n_layers=1, n_heads=2, hidden_dim=64).save_pretrained(encoder)
    with pytest.raises(ValueError, match="not a causal language model.*'distilbert'"):
        study([str(model_dirs["llama"]), str(encoder)], ["wanda"], [0.5], **SMALL)
    with pytest.raises(ValueError, match="no config.json"):
        study([str(tmp_path)], ["wanda"], [0.5], **SMALL)
    with pytest.raises(ValueError, match="neither a known model name"):
        study([str(tmp_path / "missing")], ["wanda"], [0.5], **SMALL)


def test_component_that_a_family_does_not_have(model_dirs, monkeypatch):
    _no_loading(monkeypatch)
    dirs = [str(model_dirs["llama"]), str(model_dirs["mamba2"])]
    with pytest.raises(ValueError, match="mamba2 family has no component 'attention'.*ssm_heads"):
        study(dirs, ["wanda"], [0.5], components=["attention"], **SMALL)
    with pytest.raises(ValueError, match="llama family has no component 'ssm_head'"):
        study(dirs, ["wanda"], [0.5], components=["llama:ssm_head"], **SMALL)
    with pytest.raises(ValueError, match="names family 'mamba'"):
        study(dirs, ["wanda"], [0.5], components=["mamba:in_proj"], **SMALL)
    model = AutoModelForCausalLM.from_config(reference_config("mamba2", 300, "micro"))
    with pytest.raises(ValueError, match="no structured targets"):
        prune_component(model, "in_proj", "flap", 0.5, calibration=torch.randint(3, 300, (2, 8)))


def test_mismatched_tokenizers(tmp_path, model_dirs, corpus_file, monkeypatch):
    other = tmp_path / "llama-other-tokenizer"
    other.mkdir()
    for f in model_dirs["llama"].iterdir():
        if f.is_file():
            (other / f.name).write_bytes(f.read_bytes())
    train_tokenizer(load_corpus(corpus_file).tokenizer_text(), vocab_size=280).save_pretrained(other)
    dirs = [str(model_dirs["llama"]), str(other)]
    with monkeypatch.context() as patched:
        _no_loading(patched)
        with pytest.raises(ValueError, match="different tokenizers"):
            study(dirs, ["magnitude"], [0.5], components=["mlp"], text=str(corpus_file), **SMALL)
    rows = study(
        dirs, ["magnitude"], [0.5], components=["mlp"], text=str(corpus_file), allow_mixed_tokenizers=True,
        **SMALL,
    )  # fmt: skip
    assert [r["status"] for r in rows] == ["ok", "ok"]


def test_cli_writes_the_study(tmp_path, model_dirs, corpus_file, capsys):
    shifted = tmp_path / "other.txt"
    shifted.write_text("It was a truth universally acknowledged, said the letter. " * 60, encoding="utf-8")
    out = tmp_path / "out"
    code = main([
        "study", "--models", str(model_dirs["mamba2"]), "--methods", "wanda,taylor", "--sparsities", "0.3",
        "--components", "in_proj,state", "--out", str(out), "--text", str(corpus_file),
        "--shifted-text", str(shifted), "--seq-len", str(SEQ), "--calib-samples", "2", "--eval-windows", "2",
    ])  # fmt: skip
    assert code == 0
    rows = read_csv(out / "study.csv")
    assert {(r["method"], r["component"], r["status"]) for r in rows} == {
        ("wanda", "in_proj", "ok"), ("wanda", "state", "n/a"),
        ("taylor", "in_proj", "n/a"), ("taylor", "state", "ok"),
    }  # fmt: skip
    assert all(math.isfinite(r["ppl_shifted"]) for r in rows if r["status"] == "ok")
    assert "1 failed" not in capsys.readouterr().out
    assert json.loads((model_dirs["mamba2"] / "training.json").read_text())["arch"] == "mamba2"
