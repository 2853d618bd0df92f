"""Studies: every model x method x component x sparsity, pruned from the same dense copy.

Each point is one :func:`prunekit.prune` call on a fresh deep copy of the dense model, restricted to one
component through ``targets=`` (the component's weights for unstructured/N:M methods, its group roles for
structured ones), then evaluated on every study text. Relative increase is ``ppl / dense_ppl - 1`` on the
same windows, so models of different quality are compared by what pruning cost them.

A (method, component) pair that does not apply (a structured method on "in_proj", an unstructured one on
"ssm_heads") is kept as a row with status ``n/a`` and the reason; a point whose pruning raises (FLAP on
state dims, which have no consuming layer to measure) is kept with status ``failed`` and the error. So the
CSV always holds every (model, method, sparsity, component) combination.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ... import api
from ...data import calibration_ids
from ...eval.perplexity import perplexity
from ...families import Component, get_adapter
from ...families.components import ALL
from ...models import load
from ...spec import default_structure
from ..sweep import as_list, plan_points
from . import inputs, outputs, texts

__all__ = ["study", "prune_component", "base_columns", "text_columns"]

#: columns every row has, before the per-text ones (see :func:`text_columns`)
base_columns = (
    "model",
    "family",
    "method",
    "structure",
    "component",
    "sparsity",
    "status",
    "achieved",
    "params_before",
    "params_after",
    "param_ratio",
    "prune_seconds",
    "note",
)


def text_columns(text_names: Sequence[str]) -> list[str]:
    """``ppl_<text>``, ``dense_ppl_<text>``, ``rel_<text>`` for each evaluation text."""
    return [f"{kind}_{name}" for name in text_names for kind in ("ppl", "dense_ppl", "rel")]


def prune_component(
    model: torch.nn.Module,
    component: str | Component,
    method: str,
    sparsity: float,
    structure: str | None = None,
    calibration: Any = None,
    **options: Any,
) -> api.PruneReport:
    """Prune only one named component of ``model`` (see its adapter's ``components``); in place.

    ``"all"`` prunes the method's default targets. Everything outside the component stays bit-identical.

    Raises:
        ValueError: the family has no such component, or the component has no targets for this
            method's kind of pruning (e.g. a structured method on ``"in_proj"``).
    """
    if structure is None:
        structure = default_structure(method)
    if isinstance(component, str):
        component = get_adapter(model).component(component)
    structured = structure == "structured"
    targets = None if component.name == ALL else component.targets(structured)
    if component.name != ALL and targets is None:
        raise ValueError(component.why_not(structured))
    return api.prune(
        model, method=method, sparsity=sparsity, structure=structure, calibration=calibration,
        targets=list(targets) if targets else None, **options,
    )  # fmt: skip


def study(
    models: Sequence[str],
    methods: Sequence[str] | str,
    sparsities: Sequence[float] | float,
    components: Sequence[str] | None = None,
    structure: str | None = None,
    *,
    text: str | None = None,
    shifted_text: str | None = None,
    n_samples: int = 32,
    seq_len: int = 256,
    seed: int = 0,
    max_eval_windows: int | None = None,
    eval_batch_size: int = 4,
    allow_mixed_tokenizers: bool = False,
    out_dir: str | Path | None = None,
    progress: bool = True,
    **options: Any,
) -> list[dict[str, Any]]:
    """Prune each model with each method at each sparsity, per component; return one row per point.

    ``models`` are local Hugging Face directories (or known names). ``components`` are names from the
    models' adapters (``"all"``, ``"attention"``, ``"mlp"``, ``"in_proj"``, ``"x_proj/dt_proj"``,
    ``"out_proj"``, ``"ssm_channels"``, ``"ssm_heads"``, ``"state"``), ``"family:name"`` to restrict a
    name to one family; default: every component of every family. ``structure`` is as in
    :func:`prunekit.experiments.sweep`: structured-only methods always run structured.

    Calibration is ``n_samples`` windows of ``seq_len`` from the training split of ``text`` (default: the
    stdlib docs); evaluation is the held-out split, the held-out split with every line's words shuffled,
    and ``shifted_text`` (a file of another domain) when given, each at most ``max_eval_windows`` windows.
    ``options`` go to every :func:`prunekit.prune` call.

    With ``out_dir``, writes ``study.csv``, ``study.md`` and the plots (see :mod:`.outputs`).

    Raises:
        ValueError, TypeError: bad methods, sparsities, components, model directories that are not causal
            LMs, or models with different tokenizers (unless ``allow_mixed_tokenizers``), all before any
            directory's weights are loaded (a known model name is loaded to learn its family).
    """
    methods = as_list(methods, "methods")
    sparsities = as_list(sparsities, "sparsities")
    if components is not None:
        components = as_list(components, "components")
    plan = plan_points(methods, sparsities, structure, dict(options), {})
    if shifted_text is not None:
        texts.read_text_file(shifted_text)
    checked = inputs.check_models(list(models))
    inputs.check_component_prefixes(components, {adapter.name for _s, adapter, _p in checked})
    specs = []
    for (source, adapter, preloaded), label in zip(checked, inputs.labels_for([c[0] for c in checked])):
        chosen = inputs.resolve_components(components, adapter, source)
        tokenizer = preloaded[1] if preloaded else inputs.load_tokenizer(source)
        specs.append(inputs.ModelSpec(source, label, adapter.name, adapter, chosen, tokenizer, preloaded))
    if not allow_mixed_tokenizers:
        inputs.check_shared_tokenizer(specs)

    text_names: list[str] = []
    rows: list[dict[str, Any]] = []
    settings: dict[str, str] = {}
    for spec in specs:
        dense, tokenizer = _load(spec)
        calibration = calibration_ids(tokenizer, n_samples=n_samples, seq_len=seq_len, seed=seed, source=text)
        sets = texts.eval_sets(tokenizer, text, shifted_text, seq_len, max_eval_windows, seed)
        text_names = list(sets)
        dense_ppl = {name: perplexity(dense, w, batch_size=eval_batch_size) for name, w in sets.items()}
        settings = _settings(text, shifted_text, n_samples, seq_len, seed, sets)
        points = [(m, s, st, c) for m, s, st in plan for c in spec.components]
        bar = tqdm(points, desc=f"study {spec.label}", unit="point", disable=not progress)
        for method, sparsity, chosen, component in bar:
            bar.set_postfix_str(f"{method} {component.name} {sparsity:g}")
            row = _point(dense, spec, method, sparsity, chosen, component, calibration, sets, dense_ppl,
                         eval_batch_size, options)  # fmt: skip
            rows.append(row)
        bar.close()
        del dense
    columns = [*base_columns, *text_columns(text_names)]
    rows = [{key: row.get(key) for key in columns} for row in rows]
    if out_dir is not None:
        settings["models"] = ", ".join(f"{s.label} ({s.family}: {s.source})" for s in specs)
        outputs.write_outputs(rows, text_names, Path(out_dir), settings)
    return rows


def _load(spec: inputs.ModelSpec) -> tuple[torch.nn.Module, Any]:
    if spec.preloaded is not None:
        loaded, spec.preloaded = spec.preloaded, None
        return loaded
    return load(spec.source)


def _settings(text, shifted, n_samples, seq_len, seed, sets) -> dict[str, str]:
    out = {
        "calibration": f"{n_samples} x {seq_len} tokens from the training split (seed {seed})",
        "text": text or "stdlib Python docs (pydoc_data.topics)",
    }
    for name, windows in sets.items():
        out[f"eval {name}"] = f"{windows.shape[0]} windows x {windows.shape[1]} tokens"
    if shifted:
        out["shifted text"] = shifted
    return out


def _point(
    dense: torch.nn.Module,
    spec: inputs.ModelSpec,
    method: str,
    sparsity: float,
    structure: str,
    component: Component,
    calibration: torch.Tensor,
    sets: Mapping[str, torch.Tensor],
    dense_ppl: Mapping[str, float],
    batch_size: int,
    options: Mapping[str, Any],
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "model": spec.label, "family": spec.family, "method": method, "structure": structure,
        "component": component.name, "sparsity": sparsity, "note": "",
    }  # fmt: skip
    for name, value in dense_ppl.items():
        row[f"dense_ppl_{name}"] = value
    structured = structure == "structured"
    if component.name != ALL and component.targets(structured) is None:
        row.update(status="n/a", note=component.why_not(structured))
        return row
    pruned = copy.deepcopy(dense)
    try:
        report = prune_component(pruned, component, method, sparsity, structure, calibration, **options)
        row.update(
            status="ok",
            achieved=report.achieved,
            params_before=report.params_before,
            params_after=report.params_after,
            param_ratio=report.params_after / report.params_before if report.params_before else None,
            prune_seconds=report.seconds,
        )
        for name, windows in sets.items():
            ppl = perplexity(pruned, windows, batch_size=batch_size)
            row[f"ppl_{name}"] = ppl
            row[f"rel_{name}"] = ppl / dense_ppl[name] - 1.0
    except Exception as err:  # noqa: BLE001 - one failed point must not end an hour-long study
        row = {k: row[k] for k in ("model", "family", "method", "structure", "component", "sparsity")}
        row.update({f"dense_ppl_{n}": v for n, v in dense_ppl.items()})
        row.update(status="failed", note=f"{type(err).__name__}: {err}")
    finally:
        del pruned
    return row
