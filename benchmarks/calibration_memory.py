"""Peak memory of block-wise calibration against model depth.

The calibration engine holds the inputs of one block (plus that block's statistics) at a time, so the
memory it adds on top of the model should not grow with the number of blocks. This script prunes
random ``LlamaForCausalLM`` models with SmolLM2's widths at 4 and 16 layers and reports, per method,
the extra resident memory during ``prunekit.prune`` (peak RSS sampled every 5 ms, minus RSS just before
the call), and splits off what ``prune`` holds on purpose for the whole model: the original of every
touched weight (so that a failure restores the model exactly) and the boolean masks the report
keeps. Each point runs in its own subprocess so that one point's allocations cannot hide another's.

    python benchmarks/calibration_memory.py
    python benchmarks/calibration_memory.py --layers 4 16 32 --methods wanda --calib 64
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def run_point(layers: int, method: str, calib: int, seq_len: int, mode: str) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import prunekit

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=2048,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=seq_len,
    )
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 2048, (calib, seq_len), generator=torch.Generator().manual_seed(0))
    before = rss_mb()
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    report = prunekit.prune(model, method=method, sparsity=0.5, calibration=ids, calibration_mode=mode)
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    params = sum(p.numel() for p in model.parameters())
    return {
        "layers": layers,
        "method": method,
        "mode": mode,
        "model_mb": params * 4 / 2**20,
        "rss_before_mb": before,
        "extra_mb": peak[0] - before,
        "seconds": seconds,
        # prune() is transactional: it keeps each touched weight's original (same dtype) until the
        # whole model is done, and the report keeps a bool mask per weight; both scale with depth
        "held_mb": sum(m.numel() * (1 + 4) for m in report.masks.values()) / 2**20,
        "block_input_mb": calib * seq_len * config.hidden_size * 4 / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, nargs="*", default=[4, 16])
    parser.add_argument("--methods", nargs="*", default=["wanda", "sparsegpt"])
    parser.add_argument("--modes", nargs="*", default=["sequential"])
    parser.add_argument("--calib", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        layers, method, mode = args.one.split(":")
        print(json.dumps(run_point(int(layers), method, args.calib, args.seq_len, mode)))
        return
    print(f"calibration {args.calib} x {args.seq_len} tokens; hidden 576, intermediate 1536, vocab 2048")
    print(
        "| method | mode | layers | model MB | RSS before MB | extra during prune MB "
        "| of which backup + masks MB | rest (calibration engine) MB | prune s |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for method in args.methods:
        for mode in args.modes:
            for layers in args.layers:
                cmd = [sys.executable, __file__, "--one", f"{layers}:{method}:{mode}"]
                cmd += ["--calib", str(args.calib), "--seq-len", str(args.seq_len)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(r)
                print(
                    f"| {method} | {mode} | {layers} | {r['model_mb']:.0f} | {r['rss_before_mb']:.0f} | "
                    f"{r['extra_mb']:.0f} | {r['held_mb']:.0f} | {r['extra_mb'] - r['held_mb']:.0f} | "
                    f"{r['seconds']:.1f} |",
                    flush=True,
                )
    print(f"one block's input activations: {rows[0]['block_input_mb']:.1f} MB")
    for method in args.methods:
        for mode in args.modes:
            extra = {
                r["layers"]: r["extra_mb"] - r["held_mb"]
                for r in rows
                if r["method"] == method and r["mode"] == mode
            }
            lo, hi = min(extra), max(extra)
            print(
                f"{method}/{mode}: calibration engine memory at {hi} layers / at {lo} layers = "
                f"{extra[hi] / extra[lo]:.2f} (depth ratio {hi / lo:.0f})"
            )


if __name__ == "__main__":
    main()
