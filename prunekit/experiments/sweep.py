"""Sweeps: prune one model with several methods at several sparsities and compare them.

A sweep is a loop of single ``prunekit prune`` runs, and its numbers are meant to be read as such: the
model is loaded once and every point prunes a fresh ``copy.deepcopy`` of it, with the same seeded
calibration ids and the same evaluation windows, through the same :func:`prunekit.prune` call the CLI
makes. A row of ``sweep.csv`` therefore equals what ``prunekit prune`` prints for that point.

Everything a user can get wrong (an unknown method, a sparsity outside ``[0, 1)``, a structure a method
cannot do, an option no method knows) is checked before the model is even loaded, so a typo does not
cost the first hour of a sweep. A point that fails while pruning (a schedule the model is too small for,
say) is recorded with its error and the sweep goes on.
"""

from __future__ import annotations

import copy
import csv
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import api
from ..data import calibration_ids, eval_windows
from ..eval.perplexity import js_divergence, perplexity
from ..models import load
from ..spec import build_spec, scorer_class
from .layer_plot import is_uneven, plot_layer_sparsity
from .sweep_recovery import (
    RECOVERY_COLUMNS,
    RECOVERY_HEADER,
    plan_recovery,
    plot_recovered,
    recovery_cells,
    recovery_errors,
)

__all__ = ["sweep", "structure_for", "COLUMNS", "RECOVERY_COLUMNS"]

#: columns of ``sweep.csv`` and keys of every returned row, in order
COLUMNS = (
    "method",
    "structure",
    "sparsity",
    "achieved",
    "params_before",
    "params_after",
    "param_ratio",
    "ppl",
    "ppl_dense",
    "js",
    "prune_seconds",
    "eval_seconds",
    "error",
)

ModelSource = str | Callable[[], tuple[torch.nn.Module, Any]] | tuple[torch.nn.Module, Any]


def structure_for(method: str, structure: str | None) -> str:
    """The structure ``method`` is run with in a sweep asked for ``structure``.

    Methods that can only remove whole units (the registry lists ``("structured",)`` for them) always
    run structured, whatever was asked, so one sweep can put FLAP next to Wanda. Every other method
    runs ``structure``, or its default (:func:`prunekit.spec.default_structure`) when it is None.

    Raises:
        ValueError: unknown method, unparsable structure, or a structure the method does not support.
    """
    structured_only = scorer_class(method).structures == ("structured",)
    return str(build_spec(method, None, None if structured_only else structure).structure)


def sweep(
    model: ModelSource,
    methods: Sequence[str] | str,
    sparsities: Sequence[float] | float,
    structure: str | None = None,
    *,
    n_samples: int = 32,
    seq_len: int = 256,
    seed: int = 0,
    text: str | None = None,
    max_eval_windows: int | None = None,
    eval_batch_size: int = 4,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    recover: Mapping[str, Any] | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Prune ``model`` with every method at every sparsity; return one row per point (see :data:`COLUMNS`).

    ``model`` is a known name or local directory (loaded with :func:`prunekit.models.load`), a
    zero-argument callable returning ``(model, tokenizer)``, or such a tuple; it is loaded once and
    never modified. ``structure`` applies to the methods that support it (default unstructured);
    structured-only methods (FLAP, SEAP, Wanda-sp, magnitude-sp) run structured (:func:`structure_for`).

    Calibration is ``n_samples`` windows of ``seq_len`` tokens from ``text`` (a file; default the stdlib
    docs), drawn once with ``seed``; evaluation is perplexity on :func:`prunekit.data.eval_windows`
    (at most ``max_eval_windows``) and the JS divergence to the dense model on the same windows.
    ``options`` go to every :func:`prunekit.prune` call (pruner options such as ``allocation``, or
    scorer options every method knows); ``method_options[method]`` adds options for one method.

    Each row also holds ``layer_sparsity`` (parameter -> pruned share, from the report; not in the CSV).
    With ``out_dir`` it writes ``sweep.csv`` (full precision), ``sweep.md`` (a table) and ``sweep.png``
    (perplexity against requested sparsity, one line per method, log scale, dense dashed), and for
    every point whose matrices got different shares (BESA, OWL) ``layers-<method>-<structure>-<s>.png``
    (each matrix's share by block).

    A point whose pruning or evaluation raises is kept with ``error`` set and empty numbers.

    ``recover`` (recovery options of :func:`prunekit.recover`, with ``mode`` and optionally ``method``)
    also recovers every pruned point after it was measured, on the calibration split of ``text`` (windows
    of ``seq_len`` tokens drawn with ``seed`` unless ``recover`` sets them), against the dense model for
    ``mode="reconstruct"``, and measures it again on the same windows: rows and tables get
    :data:`RECOVERY_COLUMNS` (``ppl_recovered``, ``js_recovered``, ``recovery_share``,
    ``recovery_seconds``, ``recovery_error``) and the plot a dashed line per method after recovery.

    Raises:
        ValueError, TypeError: bad methods, sparsities, structure, options or recovery options, before
            anything is loaded.
    """
    methods = as_list(methods, "methods")
    sparsities = as_list(sparsities, "sparsities")
    method_options = dict(method_options or {})
    plan = plan_points(methods, sparsities, structure, options, method_options)
    recovery = plan_recovery(recover, seq_len, seed)
    columns = COLUMNS + RECOVERY_COLUMNS if recovery else COLUMNS
    if eval_batch_size < 1:
        raise ValueError(f"eval_batch_size must be >= 1, got {eval_batch_size}")

    dense, tokenizer, label = _load(model)
    calibration = calibration_ids(tokenizer, n_samples=n_samples, seq_len=seq_len, seed=seed, source=text)
    windows = eval_windows(tokenizer, seq_len=seq_len, max_windows=max_eval_windows, source=text)
    dense_ppl = perplexity(dense, windows, batch_size=eval_batch_size)
    recovered = recovery.bind(dense, tokenizer, text, windows, eval_batch_size) if recovery else None

    rows = []
    bar = tqdm(plan, desc="sweep", unit="point", disable=not progress)
    for method, sparsity, chosen in bar:
        bar.set_postfix_str(f"{method} {chosen} {sparsity:g}")
        row = _point(
            dense, method, sparsity, chosen, calibration, windows, eval_batch_size,
            {**options, **method_options.get(method, {})}, recovered,
        )  # fmt: skip
        row["ppl_dense"] = dense_ppl
        rows.append({**{key: row.get(key) for key in columns}, "layer_sparsity": row.get("layer_sparsity")})
    bar.close()

    if out_dir is not None:
        settings = {
            "model": label,
            "calibration": f"{n_samples} x {seq_len} tokens (seed {seed})",
            "evaluation": f"{windows.shape[0]} windows x {windows.shape[1]} tokens",
            "text": text or "stdlib Python docs",
            **({"recovery": recovery.describe()} if recovery else {}),
        }
        write_outputs(rows, Path(out_dir), dense_ppl, settings, recovered=bool(recovery))
    return rows


def as_list(values: Any, what: str) -> list:
    if isinstance(values, (str, int, float)):
        values = [values]
    values = list(values)
    if not values:
        raise ValueError(f"{what} is empty")
    if len(set(values)) != len(values):
        raise ValueError(f"{what} has duplicates: {values}")
    return values


def plan_points(
    methods: list[str],
    sparsities: list[float],
    structure: str | None,
    options: dict[str, Any],
    method_options: dict[str, Mapping[str, Any]],
) -> list[tuple[str, float, str]]:
    """Every (method, sparsity, structure) point, each validated as the request it will be.

    An N:M pattern fixes the sparsity, so a method run N:M is one point whatever ``sparsities`` says."""
    unknown = sorted(set(method_options) - set(methods))
    if unknown:
        raise ValueError(f"method_options for methods not in the sweep: {unknown}")
    plan = []
    for method in methods:
        chosen = structure_for(method, structure)
        given = {**options, **method_options.get(method, {})}
        specs = []
        for s in sparsities:
            spec = build_spec(method, None if ":" in chosen else s, chosen, **given)
            if spec not in specs:
                specs.append(spec)
        plan += [(method, spec.sparsity, chosen) for spec in specs]
    return plan


def _load(model: ModelSource) -> tuple[torch.nn.Module, Any, str]:
    """(model, tokenizer, label) from a name/path, a factory or a tuple."""
    if isinstance(model, (str, Path)):
        loaded, tokenizer = load(str(model))
        return loaded, tokenizer, str(model)
    if callable(model) and not isinstance(model, torch.nn.Module):
        model = model()
    if not (isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], torch.nn.Module)):
        raise TypeError(
            "model must be a name or directory, a callable returning (model, tokenizer), or such a tuple"
        )
    loaded, tokenizer = model
    return loaded, tokenizer, type(loaded).__name__


def _point(
    dense: torch.nn.Module,
    method: str,
    sparsity: float,
    structure: str,
    calibration: torch.Tensor,
    windows: torch.Tensor,
    batch_size: int,
    options: dict[str, Any],
    recovered: Callable[[torch.nn.Module], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Prune a deep copy of ``dense`` and measure it (then ``recovered`` recovers and measures it
    again); errors become the row's ``error``."""
    row: dict[str, Any] = {"method": method, "structure": structure, "sparsity": sparsity, "error": ""}
    pruned = copy.deepcopy(dense)
    try:
        report = api.prune(
            pruned, method=method, sparsity=sparsity, structure=structure, calibration=calibration, **options
        )
        row.update(
            achieved=report.achieved,
            params_before=report.params_before,
            params_after=report.params_after,
            param_ratio=report.params_after / report.params_before if report.params_before else None,
            prune_seconds=report.seconds,
            layer_sparsity=report.layer_sparsity,
        )
        t0 = time.perf_counter()
        row["ppl"] = perplexity(pruned, windows, batch_size=batch_size)
        row["js"] = js_divergence(dense, pruned, windows, batch_size=batch_size)
        row["eval_seconds"] = time.perf_counter() - t0
        if recovered:
            row.update(recovered(pruned))  # its own errors become recovery_error
    except Exception as err:  # noqa: BLE001 - a failed point must not end the sweep
        row = {key: row[key] for key in ("method", "structure", "sparsity")}
        row["error"] = f"{type(err).__name__}: {err}"
    finally:
        del pruned
    return row


def write_outputs(
    rows: list[dict[str, Any]],
    out_dir: Path,
    dense_ppl: float,
    settings: Mapping[str, str],
    recovered: bool = False,
) -> None:
    """Write ``sweep.csv``, ``sweep.md`` and ``sweep.png`` for ``rows`` into ``out_dir`` (with the
    recovery columns and lines when ``recovered``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = COLUMNS + RECOVERY_COLUMNS if recovered else COLUMNS
    with open(out_dir / "sweep.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else csv_value(row[k]) for k in columns})
    (out_dir / "sweep.md").write_text(markdown_table(rows, dense_ppl, settings, recovered), encoding="utf-8")
    plot(rows, dense_ppl, out_dir / "sweep.png", title=settings.get("model", ""), recovered=recovered)
    for row in rows:
        shares = row.get("layer_sparsity") or {}
        if is_uneven(shares):
            name = f"layers-{row['method']}-{row['structure'].replace(':', 'of')}-{row['sparsity']:g}.png"
            title = f"{row['method']} {row['structure']} {row['sparsity']:g}: sparsity by matrix"
            plot_layer_sparsity(shares, out_dir / name, title=title)


def csv_value(value: Any) -> Any:
    # repr keeps every digit of a float, so the CSV reads back to the exact number
    return repr(value) if isinstance(value, float) else value


def settings_header(title: str, settings: Mapping[str, str]) -> list[str]:
    """A markdown title and one bullet per setting, then a blank line."""
    return [f"# {title}", "", *(f"- {key}: {value}" for key, value in settings.items()), ""]


def markdown_table(
    rows: list[dict[str, Any]], dense_ppl: float, settings: Mapping[str, str], recovered: bool = False
) -> str:
    """A markdown report: the settings, then one table row per point (dense first; the recovery
    columns at the end of each when ``recovered``)."""
    table = [
        "| method | structure | sparsity | achieved | params | perplexity | × dense | JS (nats) | prune s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| dense | — | 0 | 0 | — | {dense_ppl:.3f} | 1.00 | 0 | — |",
    ]
    if recovered:
        table = [line + cells for line, cells in zip(table, RECOVERY_HEADER)]
    errors = []
    for row in rows:
        head = f"| {row['method']} | {row['structure']} | {row['sparsity']:g} "
        tail = recovery_cells(row, dense_ppl) if recovered else ""
        if row["error"]:
            errors.append(f"- {row['method']} at {row['sparsity']:g}: {row['error']}")
            table.append(head + f"| failed ({len(errors)}) | | | | | |" + tail)
            continue
        table.append(
            head + f"| {row['achieved']:.4f} | {row['params_after']:,} ({row['param_ratio']:.3f}) "
            f"| {row['ppl']:.3f} | {row['ppl'] / dense_ppl:.2f} | {row['js']:.4f} "
            f"| {row['prune_seconds']:.1f} |" + tail
        )
    errors += recovery_errors(rows) if recovered else []
    lines = [*settings_header("prunekit sweep", settings), *table]
    if errors:
        lines += ["", "Failed points:", "", *errors]
    return "\n".join(lines) + "\n"


def plot(
    rows: list[dict[str, Any]], dense_ppl: float, path: Path, title: str = "", recovered: bool = False
) -> None:
    """Perplexity against requested sparsity, one line per method, log y, dense as a dashed line (and
    each method's perplexity after recovery dashed in its colour when ``recovered``).

    Uses an Agg canvas directly (no pyplot), so it works headless and leaves the caller's matplotlib
    backend alone.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for method in dict.fromkeys(r["method"] for r in rows):
        points = curve(rows, method, "ppl")
        if points:
            structure = next(r["structure"] for r in rows if r["method"] == method)
            xs, ys = zip(*points)
            (line,) = ax.plot(xs, ys, marker="o", label=f"{method} ({structure})")
            if recovered:
                plot_recovered(ax, curve(rows, method, "ppl_recovered"), method, line.get_color())
    ax.axhline(dense_ppl, color="black", linestyle="--", linewidth=1, label=f"dense ({dense_ppl:.2f})")
    ax.set_yscale("log")
    ax.set_xlabel("requested sparsity")
    ax.set_ylabel("perplexity (log scale)")
    ax.set_title(f"prunekit sweep {title}".strip())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def curve(rows: list[dict[str, Any]], method: str, key: str) -> list[tuple[float, float]]:
    """(sparsity, ``row[key]``) of ``method``'s points that have a finite ``key``, by sparsity."""
    return sorted(
        (r["sparsity"], r[key])
        for r in rows
        if r["method"] == method and not r["error"] and r.get(key) is not None and math.isfinite(r[key])
    )
