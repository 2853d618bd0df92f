"""A recovery run at a glance: the training loss of every step (retrain) or every block's error against
the dense block before and after (reconstruct)."""

from __future__ import annotations

from pathlib import Path

from ..engine.recovery import RecoveryReport


def plot_recovery(report: RecoveryReport, path: str | Path, title: str = "") -> Path:
    """Write the figure of ``report`` to ``path`` (PNG, Agg canvas, headless) and return the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.2, 4.4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if report.blocks:
        names = list(report.blocks)
        xs = range(len(names))
        ax.plot(xs, [report.blocks[n]["before"] for n in names], marker="o", label="pruned")
        ax.plot(xs, [report.blocks[n]["after"] for n in names], marker="o", label="reconstructed")
        ax.set_xlabel("block")
        ax.set_ylabel("relative squared error vs dense block")
        ax.set_yscale("log")
        ax.legend()
    else:
        ax.plot(range(1, len(report.losses) + 1), report.losses)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (next-token cross-entropy)")
    share = f"{100 * report.share:.2f} % trained"
    ax.set_title(title or f"recovery ({report.mode}, lora={report.options.get('lora')}, {share})")
    ax.grid(alpha=0.3)
    path = Path(path)
    fig.savefig(path)
    return path
