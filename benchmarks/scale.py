"""Scale: in-memory against offloaded pruning, and one against two calibration processes.

Part 1 prunes the same random Llama checkpoint (fp32, saved as safetensors) two ways at two depths:
*in memory* (load the whole model, ``prunekit.prune``, ``prunekit.save_pretrained``) and *offloaded*
(``prunekit.prune_offloaded``: one block in memory, the result written shard by shard). Each run is
its own subprocess; peak RSS is the kernel's high-water mark (VmHWM) minus the RSS after imports, so it
is what the pruning itself added. The offloaded peak should stay near one block whatever the depth.

Part 2 runs the same Wanda calibration with ``torchrun --nproc_per_node 1`` and ``2`` (gloo, one thread
per process) and times the whole prune call; the masks are compared for identity.

    python benchmarks/scale.py
    python benchmarks/scale.py --layers 8 32 --hidden 1024 --calib 64
    python benchmarks/scale.py --parts 3        # on a machine with CUDA: SmolLM2 on GPU vs CPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def _rss(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def _worker(mode: str, src: str, out: str, method: str, calib: int, seq_len: int) -> None:
    import torch

    import prunekit
    from prunekit import prune_offloaded

    torch.set_num_threads(1)
    ids = torch.randint(0, 1024, (calib, seq_len), generator=torch.Generator().manual_seed(0))
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # the high-water mark restarts from the current RSS
    base = _rss("VmRSS")
    t0 = time.perf_counter()
    if mode == "offload":
        prune_offloaded(src, out, method, 0.5, calibration=ids, device="cpu")
    else:
        model = _load_plain(src)
        report = prunekit.prune(model, method=method, sparsity=0.5, calibration=ids)
        prunekit.save_pretrained(model, out, report=report)
    print(json.dumps({"seconds": time.perf_counter() - t0, "peak_mb": (_rss("VmHWM") - base) / 2**20}))


def _load_plain(src: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(src, local_files_only=True).eval()


def _ddp_worker(src: str, method: str, calib: int, seq_len: int, out: str) -> None:
    import torch
    from safetensors.torch import save_file

    import prunekit
    from prunekit.engine import distributed

    torch.set_num_threads(1)
    distributed.init()
    model = _load_plain(src)
    ids = torch.randint(0, 1024, (calib, seq_len), generator=torch.Generator().manual_seed(0))
    if distributed.active():
        torch.distributed.barrier()
    t0 = time.perf_counter()
    report = prunekit.prune(model, method=method, sparsity=0.5, calibration=ids)
    seconds = time.perf_counter() - t0
    if distributed.rank() == 0:
        save_file(report.masks, out)
        print(json.dumps({"seconds": seconds}))


def _make_model(directory: Path, layers: int, hidden: int) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=1024, hidden_size=hidden, intermediate_size=int(hidden * 2.6875) // 64 * 64,
        num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 128,
        tie_word_embeddings=True,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(directory)
    return sum(f.stat().st_size for f in directory.glob("*.safetensors"))


def _run(args: list[str], env: dict | None = None) -> dict:
    run = subprocess.run(
        args, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    )
    if run.returncode:
        raise RuntimeError(run.stderr[-3000:])
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs=2, default=[8, 32])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--method", default="sparsegpt")
    parser.add_argument("--calib", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--ddp-method", default="wanda")
    parser.add_argument("--ddp-calib", type=int, default=64)
    parser.add_argument(
        "--parts", type=int, nargs="+", default=[1, 2], choices=[1, 2, 3], help="3: SmolLM2 on GPU vs CPU"
    )
    parser.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--ddp-worker", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        mode, src, out, method, calib, seq = args.worker
        return _worker(mode, src, out, method, int(calib), int(seq))
    if args.ddp_worker:
        src, method, calib, seq, out = args.ddp_worker
        return _ddp_worker(src, method, int(calib), int(seq), out)

    with tempfile.TemporaryDirectory() as tmp:
        if 1 in args.parts:
            _part1(args, Path(tmp))
        if 2 in args.parts:
            _part2(args, Path(tmp))
        if 3 in args.parts:
            _part3()


def _part1(args, tmp: Path) -> None:
    print(f"part 1: {args.method} 50 %, {args.calib} x {args.seq_len} calib tokens, width {args.hidden}")
    print("| layers | checkpoint MB | in-memory peak MB | offloaded peak MB | peak ratio | in-memory s | "
          "offloaded s | time ratio |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for layers in args.layers:
        src = tmp / f"llama-{layers}"
        size = _make_model(src, layers, args.hidden)
        point = {}
        for mode in ("memory", "offload"):
            cmd = [sys.executable, str(HERE), "--worker", mode, str(src), str(tmp / f"{mode}-{layers}"),
                   args.method, str(args.calib), str(args.seq_len)]  # fmt: skip
            point[mode] = _run(cmd)
        m, o = point["memory"], point["offload"]
        print(f"| {layers} | {size / 2**20:.0f} | {m['peak_mb']:.0f} | {o['peak_mb']:.0f} | "
              f"{o['peak_mb'] / m['peak_mb']:.2f} | {m['seconds']:.1f} | {o['seconds']:.1f} | "
              f"{o['seconds'] / m['seconds']:.2f} |")  # fmt: skip


def _part2(args, tmp: Path) -> None:
    import torch
    from safetensors.torch import load_file

    layers = args.layers[-1]
    src = tmp / f"llama-{layers}"
    if not src.exists():
        _make_model(src, layers, args.hidden)
    print(f"\npart 2: {args.ddp_method} 50 % on the {layers}-layer model, {args.ddp_calib} x {args.seq_len} "
          "calibration tokens, torchrun (gloo), one thread per process")  # fmt: skip
    print("| processes | prune s | speed-up | masks identical to 1 process |")
    print("|---:|---:|---:|---|")
    times, masks = {}, {}
    for n in (1, 2):
        out = tmp / f"ddp-{n}.safetensors"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
               str(HERE), "--ddp-worker", str(src), args.ddp_method, str(args.ddp_calib), str(args.seq_len),
               str(out)]  # fmt: skip
        times[n] = _run(cmd)["seconds"]
        masks[n] = load_file(out)
    same = masks[1].keys() == masks[2].keys() and all(torch.equal(masks[1][k], masks[2][k]) for k in masks[1])
    for n in (1, 2):
        print(f"| {n} | {times[n]:.1f} | {times[1] / times[n]:.2f} | {'yes' if same or n == 1 else 'no'} |")


def _part3(methods=("wanda", "sparsegpt", "flap")) -> None:
    """SmolLM2-135M pruning time on the GPU against the CPU (skipped without CUDA)."""
    import copy

    import torch

    import prunekit
    from prunekit.data import calibration_ids

    if not torch.cuda.is_available():
        print("\npart 3: skipped (no CUDA device)")
        return
    model, tokenizer = prunekit.models.load("smollm2-135m")
    ids = calibration_ids(tokenizer, n_samples=32, seq_len=256)
    gpu = torch.cuda.get_device_name()
    print(f"\npart 3: SmolLM2-135M, 50 % (FLAP 20 %), 32 x 256 calibration tokens; {gpu}")
    print("| method | CPU s | GPU s | speed-up | masks equal |")
    print("|---|---:|---:|---:|---|")
    for method in methods:
        sparsity = 0.2 if method == "flap" else 0.5
        timing, reports = {}, {}
        for device in ("cpu", "cuda"):
            pruned = copy.deepcopy(model).to(device)
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            reports[device] = prunekit.prune(pruned, method=method, sparsity=sparsity, calibration=ids)
            if device == "cuda":
                torch.cuda.synchronize()
            timing[device] = time.perf_counter() - t0
        masks = reports["cpu"].masks
        equal = all(torch.equal(masks[k], reports["cuda"].masks[k].cpu()) for k in masks) if masks else "n/a"
        cpu, cuda = timing["cpu"], timing["cuda"]
        print(f"| {method} | {cpu:.1f} | {cuda:.1f} | {cpu / cuda:.1f} | {equal} |")


if __name__ == "__main__":
    main()
