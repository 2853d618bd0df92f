"""One request, three front ends: Python keywords, a YAML recipe and the ``prunekit prune`` command line
build the same :class:`~prunekit.spec.PruneSpec`, and refuse the same mistake with the same message."""

from __future__ import annotations

import pytest
import yaml
from conftest import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prunekit.cli import build_parser
from prunekit.cli.spec_flags import spec_from_args
from prunekit.recipes import RecipeError, parse_recipe
from prunekit.spec import OPTIONS, SpecError, build_spec

# methods and the structures to draw for them
_METHODS = {
    "magnitude": ("unstructured", "2:4", "structured"),
    "wanda": ("unstructured", "4:8"),
    "sparsegpt": ("unstructured", "2:4"),
    "flap": ("structured",),
    "wanda-sp": ("structured",),
    "seap": ("structured",),
    "besa": ("unstructured",),
}
_TEXT = {"n_samples": st.integers(1, 64), "seq_len": st.integers(2, 512), "seed": st.integers(0, 99)}


@st.composite
def requests(draw):
    """A valid request: (method, sparsity, structure, targets, ignore, options)."""
    method = draw(st.sampled_from(sorted(_METHODS)))
    structure = draw(st.sampled_from(_METHODS[method]))
    options = {k: draw(v) for k, v in _TEXT.items() if draw(st.booleans())}
    if draw(st.booleans()):
        options["batch_size"] = draw(st.integers(1, 16))
    if structure == "unstructured":
        if method != "besa" and draw(st.booleans()):
            options["granularity"] = draw(st.sampled_from(["matrix", "row"]))
        if draw(st.booleans()):
            options["allocation"] = "owl"
            if draw(st.booleans()):
                options["owl_lambda"] = draw(st.sampled_from([0.02, 0.1]))
    if structure == "structured":
        options.update(_structured_options(draw, method))
    if method != "magnitude" and draw(st.booleans()):
        options.setdefault("calibration_mode", draw(st.sampled_from(["sequential", "dense"])))
    if method == "sparsegpt" and draw(st.booleans()):
        options["damp"] = draw(st.sampled_from([0.02, 0.05]))
    if method == "besa":
        besa = {"step": [0.05, 0.1], "importance": ["magnitude", "sparsegpt"], "epochs": [2], "lr": [0.1]}
        options.update({k: draw(st.sampled_from(v)) for k, v in besa.items() if draw(st.booleans())})
        if draw(st.booleans()):
            options["smooth"] = draw(st.booleans())
    sparsity = None if ":" in structure or draw(st.booleans()) else draw(st.sampled_from([0.1, 0.25, 0.5]))
    implied = structure if draw(st.booleans()) or method in ("flap", "seap", "wanda-sp") else None
    if implied is None and structure != ("structured" if method in ("flap", "seap") else "unstructured"):
        implied = structure
    targets = draw(st.sampled_from([None, ["mlp"], ["re:layers\\.0\\.", "q_proj"]]))
    return method, sparsity, implied, targets, None, options


def _structured_options(draw, method):
    options = {}
    for key, values in {"gqa": ["heads", "groups"], "mode": ["hard", "soft"], "round_to": [1, 4]}.items():
        if draw(st.booleans()):
            options[key] = draw(st.sampled_from(values))
    search = draw(st.sampled_from([None, "uniform", "global", "logistic", "per-layer"]))
    if search == "per-layer":
        options["layer_sparsity"] = draw(st.sampled_from([[0.1, 0.2], {0: 0.3}]))
    elif search is not None:
        options["structure_search"] = search
    if search == "logistic" or (search is None and method == "seap"):
        if draw(st.booleans()):
            options["logistic"] = {"first": 1, "k": 2.0}
    if search in (None, "uniform", "global") and method != "seap" and draw(st.booleans()):
        options["dense_blocks"] = draw(st.sampled_from([1, [1, 2]]))
    if draw(st.booleans()):
        options["bias_compensation"] = draw(st.booleans())
    if draw(st.booleans()) and options.get("bias_compensation") is not False:
        options["refit"] = True
    return options


def _recipe_spec(method, sparsity, structure, targets, ignore, options):
    stage = {"method": method}
    if sparsity is not None:
        stage["sparsity"] = sparsity
    if structure is not None:
        stage["structure"] = structure
    if targets is not None:
        stage["targets"] = targets
    calibration = {k: options[k] for k in _TEXT if k in options}
    rest = {k: v for k, v in options.items() if k not in _TEXT}
    for key in ("allocation", "owl_lambda", "owl_m"):
        if key in rest:
            stage[key] = rest.pop(key)
    if "dense_blocks" in rest and isinstance(rest["dense_blocks"], list):
        rest["dense_blocks"] = list(rest["dense_blocks"])
    if rest:
        stage["options"] = rest
    doc = {"calibration": calibration, "stages": [stage]} if calibration else {"stages": [stage]}
    return parse_recipe(yaml.safe_dump(doc, sort_keys=False)).stages[0].spec


def _flag_text(key, value):
    if isinstance(value, bool):
        return "on" if value else "off"
    if key == "layer_sparsity":
        return ",".join(str(v) for v in value) if isinstance(value, list) else None
    if key == "dense_blocks":
        return ",".join(str(v) for v in value) if isinstance(value, list) else str(value)
    if key == "logistic":
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def _argv(method, sparsity, structure, targets, ignore, options):
    argv = ["prune", "--method", method]
    if sparsity is not None:
        argv += ["--sparsity", str(sparsity)]
    if structure is not None:
        argv += ["--structure", structure]
    if targets is not None:
        argv += ["--targets", *targets]
    for key, value in options.items():
        if key in OPTIONS:
            argv += [OPTIONS[key].cli_flag, _flag_text(key, value)]
        else:
            argv += ["--method-option", f"{key}={value}"]
    return argv


def _cli_spec(*request):
    return spec_from_args(build_parser().parse_args(_argv(*request)))


@settings(max_examples=examples(80), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_python_recipe_and_command_line_build_the_same_spec(request):
    method, sparsity, structure, targets, ignore, options = request
    if isinstance(options.get("layer_sparsity"), dict):  # a dict of ratios has no command-line spelling
        options = {**options, "layer_sparsity": [options["layer_sparsity"][0]]}
    python = build_spec(method, sparsity, structure, targets, ignore, **options)
    assert _recipe_spec(*request[:5], options) == python
    assert _cli_spec(*request[:5], options) == python


# (request, recipe stage lines) with one mistake; each front end must give the same problem text
BAD = [
    (("wanda", 0.5, None, None, None, {"gqa": "groups"}), "gqa"),
    (("flap", 0.3, None, None, None, {"allocation": "owl"}), "allocation"),
    (("wanda", 0.5, "2:4", None, None, {"allocation": "owl"}), "allocation"),
    (("wanda", 0.3, "2:4", None, None, {}), "sparsity"),
    (("flap", 0.3, None, None, None, {"gqa": "group"}), "gqa"),
    (("wanda-sp", 0.3, None, None, None, {"logistic": {"first": 1}}), "logistic"),
    (("magnitude", 0.3, None, None, None, {"calibration_mode": "dense"}), "calibration_mode"),
    (("magnitude", 0.3, None, None, None, {"owl_m": 3.0}), "owl_m"),
    (("sparsegpt", 0.3, "structured", None, None, {}), "structure"),
    (("flap", 0.3, None, None, None, {"structure_search": "per-layer"}), "structure_search"),
    (("wanda", 1.5, None, None, None, {}), "sparsity"),
    (("flap", 0.3, None, None, None, {"metric": "XYZ"}), "options"),
    (("besa", 0.5, None, None, None, {"step": 0.03}), "options"),
    (("besa", 0.5, None, None, None, {"beta": -1.0}), "options"),
    (("besa", 0.5, "2:4", None, None, {}), "structure"),
    (("besa", 0.5, None, None, None, {"granularity": "row"}), "granularity"),
]


@pytest.mark.parametrize(("request_", "key"), BAD, ids=[f"{b[0][0]}-{b[1]}" for b in BAD])
def test_each_front_end_refuses_the_same_mistake_with_the_same_message(request_, key, capsys):
    with pytest.raises(SpecError) as python:
        build_spec(*request_[:5], **request_[5])
    problem = str(python.value)
    assert python.value.key == key or key == "options"
    with pytest.raises(RecipeError) as recipe:
        _recipe_spec(*request_)
    assert recipe.value.problem == problem
    from prunekit.cli import main

    assert main(_argv(*request_)) == 2
    assert capsys.readouterr().err.strip() == f"prunekit: error: {problem}"


def test_every_option_has_a_front_end_or_says_where_it_goes():
    for option in OPTIONS.values():
        assert option.help
        assert option.cli_flag is not None or option.why, option.name
        assert option.recipe is not None or option.why, option.name


def test_a_spec_built_ahead_prunes_exactly_as_the_call():
    import copy

    import torch
    from conftest import make_tiny_llama

    import prunekit

    model = make_tiny_llama(seed=3)
    ids = torch.randint(3, 64, (4, 12), generator=torch.Generator().manual_seed(3))
    by_call, by_spec = copy.deepcopy(model), copy.deepcopy(model)
    report = prunekit.prune(by_call, "wanda-sp", 0.25, calibration=ids, gqa="groups", round_to=2)
    spec = prunekit.build_spec("wanda-sp", 0.25, gqa="groups", round_to=2)
    again = prunekit.prune_with_spec(by_spec, spec, ids)
    assert report.removed == again.removed and report.removed
    assert all(
        torch.equal(a, b) for a, b in zip(by_call.state_dict().values(), by_spec.state_dict().values())
    )


def test_task_weights_must_name_tasks_of_the_calibration():
    import torch
    from conftest import make_tiny_llama

    import prunekit

    model = make_tiny_llama(seed=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(3, 64, (2, 8))
    with pytest.raises(SpecError, match=r"task_weights name tasks \['c'\]"):
        prunekit.prune(
            model, "seap", 0.2, calibration={"a": ids, "b": ids}, task_weights={"a": 1.0, "c": 1.0}
        )
    with pytest.raises(SpecError, match="task_weights blends the tasks"):
        prunekit.prune(model, "flap", 0.2, calibration=ids, task_weights={"a": 1.0})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_on_off_spell_only_the_boolean_flags(capsys):
    from prunekit.cli import main

    assert main(["prune", "--method", "flap", "--mode", "on"]) == 2
    assert "option mode='on' is not one of" in capsys.readouterr().err
