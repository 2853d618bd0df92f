"""A study's files: ``study.csv`` (every row, full precision), ``study.md`` (tables) and plots.

The plots are built by :func:`figures` from the rows alone and return the figures, so a test can read
the plotted numbers back and compare them with the CSV. Relative increase is drawn on a symmetric-log
axis: it spans from slightly negative (pruning that helps) to thousands (magnitude pruning at 50 %).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..sweep import csv_value, settings_header
from .texts import HELDOUT

__all__ = ["write_outputs", "figures", "markdown", "read_csv"]

_LINESTYLES = {"heldout": "-", "shuffled": "--", "shifted": ":"}


def write_outputs(
    rows: list[dict[str, Any]], text_names: Sequence[str], out_dir: Path, settings: Mapping[str, str]
) -> list[Path]:
    """Write the CSV, the markdown and one PNG per figure; return the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = list(rows[0]) if rows else []
    written = [out_dir / "study.csv", out_dir / "study.md"]
    with open(written[0], "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row[k] is None else csv_value(row[k]) for k in columns})
    figs = figures(rows, text_names)
    written[1].write_text(markdown(rows, text_names, settings, list(figs)), encoding="utf-8")
    for name, fig in figs.items():
        fig.savefig(out_dir / name)
        written.append(out_dir / name)
    return written


_NUMERIC = {"sparsity", "achieved", "param_ratio", "prune_seconds"}
_INTEGER = {"params_before", "params_after"}


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """``study.csv`` back as rows with numbers as numbers (empty numeric cells as None)."""
    out = []
    with open(path, newline="", encoding="utf-8") as fh:
        for raw in csv.DictReader(fh):
            row: dict[str, Any] = {}
            for key, value in raw.items():
                numeric = key in _NUMERIC or key.startswith(("ppl_", "dense_ppl_", "rel_"))
                if key in _INTEGER or numeric:
                    row[key] = None if value == "" else int(value) if key in _INTEGER else float(value)
                else:
                    row[key] = value
            out.append(row)
    return out


def _ok(rows, **where) -> list[dict[str, Any]]:
    return [r for r in rows if r["status"] == "ok" and all(r[k] == v for k, v in where.items())]


def _series(rows, text: str, **where) -> tuple[list[float], list[float]]:
    points = sorted(
        (r["sparsity"], r[f"rel_{text}"])
        for r in _ok(rows, **where)
        if r.get(f"rel_{text}") is not None and math.isfinite(r[f"rel_{text}"])
    )
    return [p[0] for p in points], [p[1] for p in points]


def figures(rows: list[dict[str, Any]], text_names: Sequence[str]) -> dict[str, Any]:
    """``{file name: Figure}``: one figure across models (component "all"), one per model by component.

    ``study_models.png``: a panel per method, a line per model and text (held-out solid, shuffled
    dashed, shifted dotted). ``study_<model>.png``: a panel per method, a line per component (held-out
    text). Line labels are ``"<model> <text>"`` and ``"<component>"``; x is the requested sparsity, y the
    relative perplexity increase.
    """
    methods = list(dict.fromkeys(r["method"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    out = {"study_models.png": _panel_figure("relative perplexity increase, whole model", methods)}
    fig, axes = out["study_models.png"]
    for ax, method in zip(axes, methods):
        for model in models:
            for text in text_names:
                xs, ys = _series(rows, text, model=model, method=method, component="all")
                if xs:
                    ax.plot(xs, ys, marker="o", linestyle=_LINESTYLES.get(text, "-"), label=f"{model} {text}")
    for model in models:
        name = f"study_{_file_safe(model)}.png"
        out[name] = _panel_figure(f"{model}: relative perplexity increase by component (held-out)", methods)
        _fig, axes = out[name]
        components = list(dict.fromkeys(r["component"] for r in rows if r["model"] == model))
        for ax, method in zip(axes, methods):
            for component in components:
                xs, ys = _series(rows, HELDOUT, model=model, method=method, component=component)
                if xs:
                    ax.plot(xs, ys, marker="o", label=component)
    for fig, axes in out.values():
        for ax in axes:
            if len(ax.get_lines()) > 1:  # more than the zero reference line
                ax.legend(fontsize=7)
        fig.tight_layout()
    return {name: fig for name, (fig, _axes) in out.items()}


def _panel_figure(title: str, methods: Sequence[str]):
    """A panel per method sharing one y axis (so methods compare at a glance), symlog in percent."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    cols = min(3, max(1, len(methods)))
    rows = math.ceil(len(methods) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows + 0.5), dpi=110)
    FigureCanvasAgg(fig)
    axes = []
    for i, method in enumerate(methods):
        ax = fig.add_subplot(rows, cols, i + 1, sharey=axes[0] if axes else None)
        ax.set_title(method, fontsize=10)
        ax.set_yscale("symlog", linthresh=0.01)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{100 * v:+.0f}%"))
        ax.set_xlabel("sparsity")
        ax.set_ylabel("perplexity increase")
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.grid(True, which="major", alpha=0.3)
        axes.append(ax)
    fig.suptitle(title, fontsize=11)
    return fig, axes


def _file_safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def _cell(row: Mapping[str, Any], text_names: Sequence[str], notes: list[str]) -> str:
    if row["status"] == "n/a":
        return "n/a"
    if row["status"] == "failed":
        if row["note"] not in notes:
            notes.append(row["note"])
        return f"failed [{notes.index(row['note']) + 1}]"
    return " / ".join(_percent(row[f"rel_{t}"]) for t in text_names)


def _percent(value: float) -> str:
    if value >= 10:
        return f"{value + 1:.0f}x"
    return f"{100 * value:+.1f}%" if abs(value) < 0.1 else f"{100 * value:+.0f}%"


def markdown(
    rows: list[dict[str, Any]], text_names: Sequence[str], settings: Mapping[str, str], plots: Sequence[str]
) -> str:
    """Settings, dense perplexities, then per model a (method, component) x sparsity table of increases."""
    lines = settings_header("prunekit study", settings)
    lines += [
        "## Dense models",
        "",
        "| model | family | " + " | ".join(f"ppl {t}" for t in text_names) + " |",
    ]
    lines.append("|---|---|" + "---:|" * len(text_names))
    seen = set()
    for row in rows:
        if row["model"] not in seen:
            seen.add(row["model"])
            dense = " | ".join(f"{row[f'dense_ppl_{t}']:.2f}" for t in text_names)
            lines.append(f"| {row['model']} | {row['family']} | {dense} |")
    sparsities = sorted({r["sparsity"] for r in rows})
    notes: list[str] = []
    lines += [
        "",
        "Cells: relative perplexity increase (ppl / dense - 1) on " + " / ".join(text_names)
        + "; values of 10 or more are shown as a factor of the dense perplexity.",
    ]  # fmt: skip
    for model in dict.fromkeys(r["model"] for r in rows):
        lines += ["", f"## {model}", ""]
        lines.append("| method | component | " + " | ".join(f"{s:g}" for s in sparsities) + " |")
        lines.append("|---|---|" + "---:|" * len(sparsities))
        keys = dict.fromkeys((r["method"], r["component"]) for r in rows if r["model"] == model)
        for method, component in keys:
            by_s = {
                r["sparsity"]: r
                for r in rows
                if (r["model"], r["method"], r["component"]) == (model, method, component)
            }
            cells = [(_cell(by_s[s], text_names, notes) if s in by_s else "") for s in sparsities]
            lines.append(f"| {method} | {component} | " + " | ".join(cells) + " |")
    if notes:
        lines += ["", "Failures:", ""] + [f"{i + 1}. {note}" for i, note in enumerate(notes)]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"
