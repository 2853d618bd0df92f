"""YAML recipes: parsing, errors that name the key and line before anything is pruned, equivalence
with hand-written prunekit.prune calls, and the ``prunekit run`` command."""

from __future__ import annotations

import copy
import textwrap

import pytest
import torch
import yaml
from conftest import examples, make_byte_tokenizer, make_tiny_llama
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prunekit
from prunekit.cli import main
from prunekit.data import calibration_ids
from prunekit.recipes import RecipeError, load_recipe, parse_recipe, run_recipe

TEXT = "Pruning removes the weights that matter least, and recipes say which in what order. " * 300


def _model() -> torch.nn.Module:
    """Tiny random Llama with room for the byte tokenizer's 257 ids."""
    model = make_tiny_llama(seed=3)
    model.resize_token_embeddings(300, mean_resizing=False)
    return model


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


def _write(tmp_path, text: str, name: str = "recipe.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_example_recipe_parses_to_its_stages(tmp_path, text_file):
    path = _write(
        tmp_path,
        """
        model: smollm2-135m
        calibration: {source: corpus.txt, n_samples: 8, seq_len: 64, seed: 3}
        stages:
          - name: structure
            method: flap
            sparsity: 0.2
            options: {structure_search: global, round_to: 4}
          - method: wanda
            structure: 2:4
            ignore: ["re:.*lm_head"]
          - method: sparsegpt
            sparsity: 0.3
            targets: mlp.down_proj
            allocation: owl
            owl_lambda: 0.05
            options: {damp: 0.02, blocksize: 16}
        """,
    )
    recipe = load_recipe(path)
    assert recipe.model == "smollm2-135m"
    cal = recipe.calibration
    assert (cal.n_samples, cal.seq_len, cal.seed) == (8, 64, 3)
    assert cal.data_source == str(text_file)  # relative to the recipe's folder
    flap, semi, sgpt = recipe.stages
    assert (flap.name, flap.method, flap.sparsity, flap.structure) == ("structure", "flap", 0.2, "structured")
    assert flap.options == {"structure_search": "global", "round_to": 4}
    # the unquoted 2:4 (a base-60 integer to YAML 1.1) is read as the pattern; N:M fixes the sparsity
    assert (semi.name, semi.structure, semi.sparsity, semi.ignore) == ("stage2", "2:4", 0.5, ["re:.*lm_head"])
    assert sgpt.targets == ["mlp.down_proj"] and sgpt.allocation == "owl" and sgpt.owl_lambda == 0.05
    assert sgpt.options == {"damp": 0.02, "blocksize": 16}
    assert sgpt.prune_kwargs() == {
        "method": "sparsegpt",
        "sparsity": 0.3,
        "structure": "unstructured",
        "targets": ["mlp.down_proj"],
        "ignore": None,
        "damp": 0.02,
        "blocksize": 16,
        "allocation": "owl",
        "owl_lambda": 0.05,
    }
    assert recipe.needs_calibration()


def test_empty_sections_mean_defaults():
    recipe = parse_recipe("calibration:\nstages:\n  - method: magnitude\n    sparsity: 0.1\n    options:\n")
    assert recipe.calibration.n_samples == 32 and recipe.stages[0].options == {}
    assert not recipe.needs_calibration()


def test_example_files_parse():
    from pathlib import Path

    folder = Path(__file__).resolve().parent.parent / "examples" / "recipes"
    files = sorted(folder.glob("*.yaml"))
    assert {f.name for f in files} >= {"flap_then_2of4.yaml", "wanda_owl.yaml"}
    for f in files:
        assert load_recipe(f).stages


BASE = """\
calibration: {source: corpus.txt, n_samples: 2, seq_len: 16}
stages:
  - name: one
    method: magnitude
    sparsity: 0.25
"""

# (recipe text with '#<' on the offending line, key path in the message, words of the problem)
BAD = [
    ("stagse: []  #<\n", "stagse", "unknown key 'stagse'"),
    (BASE + "    sparsty: 0.3  #<\n", "stages[0].sparsty", "did you mean 'sparsity'"),
    (BASE + "    options: {metric: WIFV}  #<\n", "stages[0].options.metric", "an option of flap"),
    (BASE + "    options: {frobnicate: 1}  #<\n", "stages[0].options.frobnicate", "unknown key 'frobnicate'"),
    (
        BASE.replace("magnitude", "wanda") + "    options: {blocksize: 8}  #<\n",
        "options.blocksize",
        "an option of sparsegpt",
    ),
    (BASE + "    options:\n      seq_len: 8  #<\n", "options.seq_len", "calibration' section"),
    (BASE + "    options:\n      granularity: rows  #<\n", "options.granularity", "not one of"),
    (BASE.replace("16}", "16, size: 3}  #<"), "calibration.size", "unknown key"),
    (BASE.replace("n_samples: 2", "n_samples: many").replace("16}", "16}  #<"), "n_samples", "an integer"),
    (BASE.replace("corpus.txt", "wikitext").replace("16}", "16}  #<"), "calibration.source", "neither"),
    (
        BASE + '    targets: ["mlp", "re:(unclosed"]  #<\n',
        "stages[0].targets[1]",
        "invalid regular expression",
    ),
    (BASE.replace("0.25", "1.0  #<"), "stages[0].sparsity", "[0, 1)"),
    (BASE.replace("0.25", "-0.1  #<"), "stages[0].sparsity", "[0, 1)"),
    (BASE.replace("0.25", "yes  #<"), "stages[0].sparsity", "must be a number"),
    (BASE + '    structure: "4:2"  #<\n', "stages[0].structure", "0 < N < M"),
    (BASE + '    structure: "2-4"  #<\n', "stages[0].structure", "'N:M' like '2:4'"),
    (BASE + '    structure: "2:"  #<\n', "stages[0].structure", "'N:M' like '2:4'"),
    (
        BASE.replace("sparsity: 0.25", 'sparsity: 0.3  #<\n    structure: "2:4"'),
        "sparsity",
        "fixes the sparsity",
    ),
    (BASE.replace("magnitude", "magnitud  #<"), "stages[0].method", "unknown method 'magnitud'"),
    (
        BASE.replace("magnitude", "sparsegpt") + "    structure: structured  #<\n",
        "structure",
        "does not support",
    ),
    (
        BASE.replace("sparsity: 0.25", "structure: '2:4'\n    allocation: owl  #<"),
        "stages[0].allocation",
        "applies to unstructured pruning, not N:M",
    ),
    (BASE + "    owl_m: 3  #<\n", "stages[0].owl_m", "only used with allocation='owl'"),
    (
        BASE + "    structure: structured\n    options: {granularity: row}  #<\n",
        "granularity",
        "applies to unstructured pruning",
    ),
    (
        BASE + "    options: {bias_compensation: true}  #<\n",
        "options.bias_compensation",
        "applies to structured pruning",
    ),
    (BASE + "    method: wanda  #<\n", "stages[0].method", "duplicate key"),
    (
        BASE + "  - name: one  #<\n    method: magnitude\n    sparsity: 0.1\n",
        "stages[1].name",
        "already used",
    ),
    (BASE + "  - sparsity: 0.1  #<\n", "stages[1]", "needs a 'method'"),
    (BASE + "   ignore: mlp  #<\n", "", "not valid YAML"),
]


def _marked_line(text: str) -> int:
    """1-based line of the '#<' marker: where the error must point."""
    return next(i + 1 for i, line in enumerate(text.splitlines()) if "#<" in line)


@pytest.mark.parametrize("text,key,words", BAD, ids=[b[1] or b[2] for b in BAD])
def test_bad_recipe_names_key_and_line_and_leaves_model_alone(tmp_path, text_file, text, key, words):
    path = _write(tmp_path, text)
    model = _model()
    before = _state(model)
    with pytest.raises(RecipeError) as info:
        run_recipe(model, path, tokenizer=make_byte_tokenizer())
    err = info.value
    assert isinstance(err, ValueError)
    assert words in str(err) and key in err.key
    assert err.line == _marked_line(text), str(err)
    assert f"{path}:{err.line}:" in str(err)
    assert _same(before, _state(model))


MODEL_BAD = [
    ('    targets: ["mlp.up_proj", "mlp.upproj"]  #<\n', "targets[1]", "'mlp.upproj' matches nothing"),
    ('    ignore: "re:^nothing$"  #<\n', "ignore[0]", "matches nothing"),
    ("    structure: structured\n    targets: [mlpp]  #<\n", "targets[0]", "'mlpp' matches nothing"),
    ('    targets: ["re:.*"]  #<\n', "targets", "outside"),
]


@pytest.mark.parametrize("extra,key,words", MODEL_BAD, ids=[m[1] for m in MODEL_BAD])
def test_targets_that_do_not_resolve_fail_before_pruning(tmp_path, text_file, extra, key, words):
    text = BASE.replace("magnitude", "wanda") + extra
    path = _write(tmp_path, text)
    model = _model()
    before = _state(model)
    with pytest.raises(RecipeError) as info:
        run_recipe(model, path, tokenizer=make_byte_tokenizer())
    assert words in str(info.value) and info.value.key.endswith(key)
    assert info.value.line == _marked_line(text)
    assert _same(before, _state(model))


def test_nm_after_structured_is_refused_up_front_when_rows_may_not_fit(tmp_path, text_file):
    """The hand-written calls fail at the second call, after the first has pruned; the recipe fails first."""
    stage1 = {"method": "magnitude", "sparsity": 0.05, "structure": "structured"}
    stage2 = {"method": "magnitude", "structure": "2:4"}
    by_hand = _model()
    prunekit.prune(by_hand, **stage1)  # 48 -> 46 MLP channels
    with pytest.raises(ValueError, match="not a multiple of 4"):
        prunekit.prune(by_hand, **stage2)

    text = "stages:\n  - method: magnitude\n    sparsity: 0.05\n    structure: structured\n"
    text += "  - method: magnitude\n    structure: '2:4'  #<\n"
    model = _model()
    before = _state(model)
    with pytest.raises(RecipeError, match=r"round_to: 4") as info:
        run_recipe(model, _write(tmp_path, text))
    assert info.value.line == _marked_line(text)
    assert _same(before, _state(model))
    # with round_to the same two stages run
    fixed = text.replace("structure: structured\n", "structure: structured\n    options: {round_to: 4}\n")
    reports = run_recipe(model, _write(tmp_path, fixed))
    assert reports[1].achieved == pytest.approx(0.5)


def test_two_stage_recipe_equals_two_prune_calls(tmp_path, text_file):
    text = """\
    calibration: {source: corpus.txt, n_samples: 4, seq_len: 32, seed: 5}
    stages:
      - name: structure
        method: flap
        sparsity: 0.25
        options: {structure_search: global, round_to: 4}
      - name: semi
        method: wanda
        structure: "2:4"
        ignore: ["re:layers\\\\.1\\\\.mlp\\\\.down_proj"]
    """
    tok = make_byte_tokenizer()
    model = _model()
    by_hand = copy.deepcopy(model)
    reports = run_recipe(model, _write(tmp_path, text), tokenizer=tok)

    ids = calibration_ids(tok, n_samples=4, seq_len=32, seed=5, source=str(text_file))
    r1 = prunekit.prune(
        by_hand, "flap", 0.25, "structured", calibration=ids, structure_search="global", round_to=4
    )
    r2 = prunekit.prune(
        by_hand, "wanda", 0.5, "2:4", calibration=ids, ignore=[r"re:layers\.1\.mlp\.down_proj"]
    )
    assert _same(_state(by_hand), _state(model))
    assert [r.options["stage"] for r in reports] == ["structure", "semi"]
    assert reports[0].removed == r1.removed and reports[0].removed  # something was removed
    assert reports[1].masks.keys() == r2.masks.keys()
    assert "model.layers.1.mlp.down_proj.weight" not in reports[1].masks
    assert model.config.prunekit_layers == by_hand.config.prunekit_layers


def test_calibration_needs_a_tokenizer_or_ids(tmp_path, text_file):
    path = _write(tmp_path, BASE.replace("magnitude", "wanda"))
    model = _model()
    before = _state(model)
    with pytest.raises(ValueError, match="tokenizer="):
        run_recipe(model, path)
    assert _same(before, _state(model))
    ids = torch.randint(0, 300, (2, 16))
    run_recipe(model, path, calibration=ids)  # explicit ids replace the recipe's section
    by_hand = _model()
    prunekit.prune(by_hand, "wanda", 0.25, calibration=ids)
    assert _same(_state(by_hand), _state(model))


# ---------------------------------------------------------------------------------------------------
# Random recipes: what is written is what is parsed, and one bad value is reported at its own line.

_METHODS = {"magnitude": ("unstructured", "2:4", "structured"), "wanda": ("unstructured", "4:8"), "flap": ()}


@st.composite
def _stages(draw):
    stages = []
    for i in range(draw(st.integers(1, 4))):
        method = draw(st.sampled_from(sorted(_METHODS)))
        stage = {"name": f"s{i}", "method": method}
        structure = draw(st.sampled_from(_METHODS[method] or ("structured",)))
        if _METHODS[method]:
            stage["structure"] = structure
        if ":" not in structure:
            stage["sparsity"] = draw(st.floats(0.0, 0.95, allow_nan=False))
        if draw(st.booleans()):
            stage["targets"] = draw(st.lists(st.sampled_from(["mlp", "re:layers\\.0", "q_proj"]), min_size=1))
        if structure == "unstructured" and draw(st.booleans()):
            stage["options"] = {"granularity": draw(st.sampled_from(["row", "matrix"]))}
        stages.append(stage)
    return {"calibration": {"n_samples": draw(st.integers(1, 64))}, "stages": stages}


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_stages())
def test_random_valid_recipes_parse_to_what_was_written(doc):
    recipe = parse_recipe(yaml.safe_dump(doc, sort_keys=False))
    assert recipe.calibration.n_samples == doc["calibration"]["n_samples"]
    assert len(recipe.stages) == len(doc["stages"])
    for stage, spec in zip(recipe.stages, doc["stages"]):
        assert stage.name == spec["name"] and stage.method == spec["method"]
        assert stage.structure == spec.get("structure", "structured")
        n_m = spec.get("structure", "").split(":")
        expected = int(n_m[0]) / int(n_m[1]) if len(n_m) == 2 else spec["sparsity"]
        assert stage.sparsity == pytest.approx(expected)
        assert stage.targets == spec.get("targets") and stage.options == spec.get("options", {})


_MUTATIONS = {
    "unknown_key": ("zz_unknown_key", "unknown key"),
    "sparsity": ("sparsity", "must lie in"),
    "structure": ("structure", "structure must be"),
    "method": ("method", "unknown method"),
    "pattern": ("targets", "invalid regular expression"),
}


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_stages(), st.data())
def test_random_invalid_value_is_reported_at_its_line(doc, data):
    i = data.draw(st.integers(0, len(doc["stages"]) - 1))
    kind = data.draw(st.sampled_from(sorted(_MUTATIONS)))
    key, words = _MUTATIONS[kind]
    stage = doc["stages"][i]
    marker = {
        "unknown_key": 1,
        "sparsity": 7.123456,
        "structure": "sparse-ish-7",
        "method": "no-such-method",
        "pattern": ["mlp", "re:(((7"],
    }[kind]
    if kind == "sparsity" and ":" in stage.get("structure", ""):
        stage["structure"] = "unstructured"  # N:M would be reported for fixing the sparsity instead
    if kind == "structure":
        stage["method"] = "magnitude"
    stage[key] = marker
    text = yaml.safe_dump(doc, sort_keys=False)
    needle = {"unknown_key": "zz_unknown_key", "pattern": "re:(((7"}.get(kind, str(marker))
    with pytest.raises(RecipeError, match=words) as info:
        parse_recipe(text)
    err = info.value
    assert err.key.startswith(f"stages[{i}].{key}")
    assert needle in text.splitlines()[err.line - 1]


# ---------------------------------------------------------------------------------------------------
# prunekit run


@pytest.fixture
def model_dir(tmp_path):
    path = tmp_path / "tiny"
    _model().save_pretrained(path)
    make_byte_tokenizer().save_pretrained(path)
    return path


def _cli_recipe(tmp_path, model_line: str = "") -> str:
    (tmp_path / "corpus.txt").write_text(TEXT)
    text = f"""\
    {model_line}
    calibration: {{source: corpus.txt, n_samples: 2, seq_len: 32}}
    stages:
      - name: heads
        method: wanda-sp
        sparsity: 0.25
        options: {{round_to: 4}}
      - name: semi
        method: wanda
        structure: "2:4"
    """
    return str(_write(tmp_path, text))


def test_run_command_prints_stages_and_perplexity(tmp_path, model_dir, capsys):
    recipe = _cli_recipe(tmp_path)
    assert main(["run", recipe, "--model", str(model_dir), "--eval-windows", "2"]) == 0
    out = capsys.readouterr().out
    assert "stage 1/2: heads" in out and "stage 2/2: semi" in out
    assert "prunekit wanda · 2:4" in out and "perplexity: dense" in out


def test_run_command_takes_the_model_from_the_recipe_and_skips_eval(tmp_path, model_dir, capsys):
    recipe = _cli_recipe(tmp_path, model_line=f"model: {model_dir.name}")  # relative to the recipe
    assert main(["run", recipe, "--no-eval"]) == 0
    out = capsys.readouterr().out
    assert "stage 2/2: semi" in out and "perplexity" not in out


def test_run_command_refuses_a_bad_recipe_with_its_line(tmp_path, model_dir, capsys):
    recipe = _cli_recipe(tmp_path).replace("recipe.yaml", "bad.yaml")
    (tmp_path / "bad.yaml").write_text(
        (tmp_path / "recipe.yaml").read_text().replace("wanda-sp", "wanda-spp")
    )
    assert main(["run", recipe, "--model", str(model_dir)]) == 2
    err = capsys.readouterr().err
    assert f"{recipe}:5: stages[0].method: unknown method 'wanda-spp'" in err


def test_run_command_saves_the_pruned_model(tmp_path, model_dir, capsys):
    from prunekit.models import load

    recipe = _cli_recipe(tmp_path)
    out_dir = tmp_path / "out"
    assert main(["run", recipe, "--model", str(model_dir), "--eval-windows", "2", "--out", str(out_dir)]) == 0
    assert (out_dir / "recipe.yaml").read_text() == (tmp_path / "recipe.yaml").read_text()
    model, _tok = load(str(out_dir))
    up = model.model.layers[0].mlp.up_proj.weight
    assert up.shape[0] % 4 == 0 and up.shape[0] < 48
    assert int((up == 0).sum()) == up.numel() // 2
