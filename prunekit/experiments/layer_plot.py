"""Where a method put the sparsity: each matrix's pruned share by block, one line per kind of matrix.

Methods that allocate sparsity (BESA's learned rows, OWL's block targets) leave matrices with different
shares; a sweep draws one such figure per point whose shares differ, so the allocation can be seen.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

_BLOCK = re.compile(r"\.(\d+)\.(.+)$")


def by_kind(layer_sparsity: Mapping[str, float]) -> dict[str, dict[int, float]]:
    """``{"self_attn.q_proj.weight": {block: share}}`` from parameter names ``<blocks>.<index>.<path>``
    (the first dotted number is the block's); names without one are left out."""
    out: dict[str, dict[int, float]] = {}
    for name, share in layer_sparsity.items():
        match = _BLOCK.search(name)  # the first ".<index>." is the block's
        if match is None:
            continue
        block, kind = int(match.group(1)), match.group(2)
        out.setdefault(kind, {})[block] = share
    return out


def is_uneven(layer_sparsity: Mapping[str, float], tol: float = 1e-3) -> bool:
    """Whether the matrices' shares differ (a uniform allocation draws nothing worth a figure)."""
    values = list(layer_sparsity.values())
    return bool(values) and max(values) - min(values) > tol


def plot_layer_sparsity(layer_sparsity: Mapping[str, float], path: Path, title: str = "") -> None:
    """Pruned share against block index, one line per kind of matrix (Agg canvas, headless)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.2, 4.4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for kind, per_block in sorted(by_kind(layer_sparsity).items()):
        blocks = sorted(per_block)
        label = kind.removesuffix(".weight")
        ax.plot(blocks, [per_block[b] for b in blocks], marker=".", label=label)
    ax.set_xlabel("block")
    ax.set_ylabel("pruned share of the matrix")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    fig.savefig(path)
