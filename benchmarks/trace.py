"""How long does ``prunekit.graph.trace`` take, and does it grow linearly with depth?

Times the public ``trace()`` on the real SmolLM2-135M (30 layers) and on randomly initialised
``LlamaForCausalLM`` models with SmolLM2's widths (hidden 576, intermediate 1536, 9 query heads, 3 KV
heads) and a small vocabulary, at several depths. Each model is also traced phase by phase, the way
``trace()`` composes them (export, label propagation, group building, adapter naming/rejection), so the
table shows where the time goes.

Usage::

    python benchmarks/trace.py                       # SmolLM2 + random Llama at 15, 30 and 60 layers
    python benchmarks/trace.py --layers 15 30 --repeat 1 --no-real

Each model is traced ``--repeat`` times. ``trace()`` is reported in wall-clock seconds (fastest and median
run) and in CPU seconds of this process (fastest run); the scaling ratio and the phases use CPU time,
which other programs competing for the same cores disturb far less than wall time. The load average is
printed before and after, so a busy machine shows. A small 2-layer model is traced once first, so
one-time costs of ``torch.export`` (lazy imports, dispatcher warm-up) are not charged to the first row.
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import transformers

import prunekit
from prunekit.families import get_adapter
from prunekit.graph import trace
from prunekit.graph.build import build_groups
from prunekit.graph.tracer import export_model, propagate

try:  # trace() computes tied-weight aliases with this private helper; use it so the phases match trace()
    from prunekit.graph.graph import graph_aliases
except ImportError:  # pragma: no cover - the helper moved; untied models need no aliases

    def graph_aliases(model):
        return {}


#: SmolLM2-135M's widths; only the depth and the vocabulary differ in the random models
SMOLLM2_WIDTHS = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=2048,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
)


def random_llama(layers: int, vocab: int, seed: int) -> torch.nn.Module:
    config = transformers.LlamaConfig(
        num_hidden_layers=layers,
        vocab_size=vocab,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
        **SMOLLM2_WIDTHS,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).eval()


def phases(model: torch.nn.Module) -> dict[str, float | int]:
    """Run trace()'s steps one by one; returns the CPU seconds of each phase and counts."""
    t0 = time.process_time()
    adapter = get_adapter(model)
    exported = export_model(model)
    t1 = time.process_time()
    state = propagate(exported, opaque_modules=adapter.opaque_modules, aliases=graph_aliases(model))
    t2 = time.process_time()
    groups, pinned = build_groups(state)
    t3 = time.process_time()
    accepted = 0
    for g in groups:
        g.role = adapter.role(g, model)
        if not adapter.rejects(g, model):
            accepted += 1
    t4 = time.process_time()
    ops = sum(1 for n in exported.graph.nodes if n.op == "call_function")
    return {
        "export": t1 - t0,
        "propagate": t2 - t1,
        "build": t3 - t2,
        "adapter": t4 - t3,
        "groups": accepted,
        "ops": ops,
    }


def measure(name: str, layers: int, model: torch.nn.Module, repeat: int) -> dict:
    walls, cpus, runs = [], [], []
    groups = rejected = None
    for _ in range(repeat):
        gc.collect()
        w0, c0 = time.perf_counter(), time.process_time()
        graph = trace(model)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
        groups, rejected = len(graph.groups), len(graph.rejected)
        del graph
        gc.collect()
        runs.append(phases(model))
    if any(r["groups"] != groups for r in runs):
        raise RuntimeError(f"{name}: the phase-by-phase run found a different number of groups than trace()")
    row = {"model": name, "layers": layers, "groups": groups, "rejected": rejected}
    row["wall"], row["wall_median"], row["cpu"] = min(walls), statistics.median(walls), min(cpus)
    for key in ("export", "propagate", "build", "adapter"):
        row[key] = min(r[key] for r in runs)
    row["sum"] = row["export"] + row["propagate"] + row["build"] + row["adapter"]
    row["ops"] = runs[0]["ops"]
    return row


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def machine() -> list[str]:
    def sh(cwd, *cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "?"

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "?"
    pkg = Path(prunekit.__file__).resolve().parent
    commit = sh(pkg, "git", "rev-parse", "--short", "HEAD")
    if commit == "?":
        where = f"prunekit from {pkg} (not a git checkout)"
    else:
        dirty = sh(pkg, "git", "status", "--porcelain", "--untracked-files=no", "--", ".")
        where = f"prunekit from {pkg} at {commit}" + (" + uncommitted changes" if dirty else "")
    return [
        f"CPU: {cpu}, nproc {sh('.', 'nproc')}, torch threads {torch.get_num_threads()}",
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}",
        where,
    ]


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    right = [i > 0 for i in range(len(headers))]  # numbers right-aligned, the model name left-aligned

    def fmt(cells):
        padded = (c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True))
        return "| " + " | ".join(padded) + " |"

    rule = ("-" * (w + 1) + ":" if r else "-" * (w + 2) for w, r in zip(widths, right, strict=True))
    sep = "|" + "|".join(rule) + "|"
    return "\n".join([fmt(headers), sep, *(fmt(r) for r in rows)])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[15, 30, 60], help="depths of the random models")
    ap.add_argument("--repeat", type=int, default=5, help="runs per model (fastest and median reported)")
    ap.add_argument("--vocab", type=int, default=2048, help="vocabulary of the random models")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-real", action="store_true", help="skip the real SmolLM2-135M")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")

    print("\n".join(machine()))
    print(f"command: python benchmarks/trace.py {' '.join(argv)}".rstrip())

    print(f"load average before: {loadavg()}")
    t0 = time.perf_counter()
    trace(random_llama(2, args.vocab, args.seed))
    print(f"warm-up (2-layer random Llama, first trace in the process): {time.perf_counter() - t0:.2f} s\n")

    rows = []
    if not args.no_real:
        from prunekit.models import load

        model, _tok = load("smollm2-135m")
        rows.append(measure("SmolLM2-135M", model.config.num_hidden_layers, model, args.repeat))
        del model, _tok
        gc.collect()
    for n in args.layers:
        model = random_llama(n, args.vocab, args.seed)
        rows.append(measure(f"random Llama (vocab {args.vocab})", n, model, args.repeat))
        del model
        gc.collect()

    randoms = [r for r in rows if r["model"].startswith("random")]
    base = min(randoms, key=lambda r: r["layers"]) if randoms else None
    summary, detail = [], []
    for r in rows:
        if base is not None:
            scaling = f"{r['cpu'] / base['cpu']:.2f} (linear: {r['layers'] / base['layers']:.2f})"
        else:
            scaling = "-"
        summary.append(
            [
                r["model"],
                str(r["layers"]),
                str(r["groups"]),
                str(r["rejected"]),
                f"{r['wall']:.2f}",
                f"{r['wall_median']:.2f}",
                f"{r['cpu']:.2f}",
                f"{r['cpu'] / r['layers']:.3f}",
                scaling,
            ]
        )
        share = r["sum"] or 1.0
        detail.append(
            [
                r["model"],
                str(r["layers"]),
                str(r["ops"]),
                *(f"{r[k]:.2f} ({100 * r[k] / share:.0f} %)" for k in ("export", "propagate", "build")),
                f"{r['adapter']:.3f}",
                f"{r['sum']:.2f}",
            ]
        )
    base_note = f"{base['layers']}-layer random Llama" if base else "n/a"
    print(f"load average after: {loadavg()}\n")
    print(
        f"trace(), {args.repeat} runs per model: wall-clock seconds (fastest, median) and CPU seconds of "
        f"this process (fastest); CPU s / layer and ratio (relative to the {base_note}) use CPU time\n"
    )
    headers = ["model", "layers", "groups", "rejected", "wall s", "wall median s", "CPU s", "CPU s / layer"]
    print(table([*headers, "ratio"], summary))
    print(
        f"\nphases, CPU seconds, fastest of {args.repeat} runs each (sum: of those; %: share of that sum; "
        "ops: call_function nodes in the exported graph)\n"
    )
    print(
        table(
            ["model", "layers", "ops", "export s", "propagate s", "build_groups s", "adapter s", "sum s"],
            detail,
        )
    )


if __name__ == "__main__":
    main()
