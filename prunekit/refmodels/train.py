"""Train a reference model from scratch: a plain, deterministic PyTorch AdamW loop.

No pretrained Mamba weights can be installed offline, so prunekit trains its own small, matched
Llama / Mamba / Mamba-2 models (:mod:`prunekit.refmodels.configs`) on the same tokens in the same order.
Everything that could differ between architectures is fixed by the arguments and the seed:

* the tokenizer (one directory shared by all runs, see :func:`train_reference`'s ``tokenizer``);
* the data order: training windows tile the training split from a seeded random offset each epoch and
  are shuffled with a ``torch.Generator`` of their own, so the order depends only on the seed, the
  corpus, ``seq_len``, ``batch_size`` and the budget -- never on the architecture;
* the initialisation (``torch.manual_seed(seed)`` right before the model is built) and the kernels
  (``torch.use_deterministic_algorithms`` during training), so the same call gives bit-identical weights.

Measured on the 2-core development machine while other jobs shared it (so pessimistic), training
throughput at ``seq_len=256``, batch 4, one thread: Llama ~1,520 tokens/s, Mamba-2 ~540 tokens/s,
Mamba-1 ~210 tokens/s (with :mod:`prunekit.families.mamba_scan`; transformers' stock CPU scan has a
quadratic backward and managed under 20 tokens/s).  Mamba-1 bounds the shared budget: the default
:data:`DEFAULT_TOKENS` (229,376 tokens, 224 steps of 4 x 256) takes about 18 minutes for Mamba-1
(+1 for the final evaluation), 7 for Mamba-2 and 2.5 for Llama, so the three fit in ~20 minutes on two
cores run side by side.  See docs/reference-models.md.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from prunekit.eval import perplexity

from ..families.mamba_scan import linear_mamba_scan
from .configs import check_arch, count_parameters, reference_config
from .corpus import Corpus, load_corpus
from .tokenizer import has_tokenizer, load_or_train_tokenizer, save_tokenizer

__all__ = ["train_reference", "DEFAULT_SEQ_LEN", "DEFAULT_TOKENS", "DEFAULT_BATCH_SIZE", "DEFAULT_LR"]

DEFAULT_SEQ_LEN = 256
DEFAULT_BATCH_SIZE = 4
DEFAULT_TOKENS = 229_376  # 224 optimizer steps of 4 x 256: Mamba-1 ~18 min on one shared core
DEFAULT_LR = 2e-3
DEFAULT_VOCAB = 4096
TRAINING_FILE = "training.json"


def train_reference(
    arch: str,
    out_dir: str | Path,
    corpus=None,
    *,
    tokenizer: str | Path | PreTrainedTokenizerBase | None = None,
    vocab_size: int = DEFAULT_VOCAB,
    size: str = "small",
    config_overrides: dict[str, Any] | None = None,
    seq_len: int = DEFAULT_SEQ_LEN,
    token_budget: int = DEFAULT_TOKENS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lr: float = DEFAULT_LR,
    min_lr_ratio: float = 0.1,
    warmup_fraction: float = 0.05,
    weight_decay: float = 0.1,
    grad_clip: float = 1.0,
    seed: int = 0,
    max_minutes: float | None = None,
    eval_windows: int | None = None,
    threads: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Train ``arch`` (``"llama"``, ``"mamba"`` or ``"mamba2"``) from scratch and save it to ``out_dir``.

    ``corpus``: anything :func:`prunekit.refmodels.corpus.load_corpus` takes (default: the stdlib
    Python docs).  ``tokenizer``: a tokenizer object; or a directory, loaded when it holds a reference
    tokenizer for this corpus and ``vocab_size`` and otherwise trained there; default
    ``<out_dir>/../tokenizer``, so ``out/llama``, ``out/mamba`` and ``out/mamba2`` share ``out/tokenizer``.

    The schedule is linear warmup over ``warmup_fraction`` of the steps, then cosine decay to
    ``min_lr_ratio * lr``; AdamW (betas 0.9/0.95) decays only matrices (not norms, biases, ``D``,
    ``A_log`` or ``dt_bias``), gradients are clipped to ``grad_clip``.  ``token_budget`` counts window
    positions (``steps * batch_size * seq_len``).  ``max_minutes`` stops early (recorded).  At the end
    the perplexity of the training split and of the held-out split (all windows, or ``eval_windows``) is
    measured with :func:`prunekit.eval.perplexity`; the held-out figure equals what ``prunekit eval``
    reports for the saved model on the same text and ``seq_len``.  ``threads`` sets torch's CPU threads
    for the call (restored afterwards); bit-identical reruns need the same thread count.

    Saves ``save_pretrained`` safetensors weights, the tokenizer and ``training.json`` into ``out_dir``
    and returns the ``training.json`` contents.

    Raises:
        ValueError: unknown arch or size, bad numbers, a non-empty ``out_dir`` without ``overwrite``,
            a corpus too small for one training and one held-out window, or a mismatched tokenizer dir.
    """
    check_arch(arch)
    _check_numbers(seq_len, token_budget, batch_size, lr, min_lr_ratio, warmup_fraction, max_minutes)
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 or None, got {threads}")
    out_dir = Path(out_dir).expanduser()
    if out_dir.is_file() or (out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite):
        raise ValueError(f"output directory {out_dir} exists and is not empty (pass overwrite=True)")
    corpus = load_corpus(corpus)
    reference_config(arch, vocab_size, size, **(config_overrides or {}))  # validate before any work
    tokenizer, tokenizer_dir, unsaved = _resolve_tokenizer(tokenizer, corpus, vocab_size, out_dir)

    train_ids, heldout_ids = corpus.split(tokenizer)
    text_len = seq_len - 1  # every window is BOS + seq_len - 1 corpus tokens
    for split_name, ids in (("training", train_ids), ("held-out", heldout_ids)):
        if len(ids) < text_len:
            raise ValueError(
                f"corpus {corpus.name!r} is too small: its {split_name} split has {len(ids)} tokens, fewer "
                f"than one window of {seq_len} (use more text or a shorter seq_len)"
            )
    if unsaved:  # only now that the corpus is known to be usable
        tokenizer = save_tokenizer(tokenizer, tokenizer_dir, corpus.tokenizer_text(), vocab_size)
    steps = token_budget // (batch_size * seq_len)
    config = reference_config(
        arch, len(tokenizer), size, max_position_embeddings=max(1024, seq_len), **(config_overrides or {})
    )

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    starts = _data_order(len(train_ids), text_len, batch_size * steps, seed)
    bos = tokenizer.bos_token_id

    scan = linear_mamba_scan() if arch == "mamba" else contextlib.nullcontext()
    with _threads(threads), _deterministic(), scan:
        curve, seconds, done = _fit(
            model, train_ids, starts, text_len, bos, batch_size, steps, lr, min_lr_ratio,
            warmup_fraction, weight_decay, grad_clip, max_minutes, progress, arch,
        )  # fmt: skip

    model.eval()
    heldout = corpus.heldout_windows(tokenizer, seq_len, eval_windows)
    train_windows = _tile(train_ids, text_len, bos, eval_windows or len(heldout))
    with _threads(threads):
        train_ppl = perplexity(model, train_windows, batch_size=8)
        heldout_ppl = perplexity(model, heldout, batch_size=8)
        used_threads = torch.get_num_threads()
    summary = {
        "arch": arch,
        "size": size,
        "parameters": count_parameters(model),
        "seq_len": seq_len,
        "batch_size": batch_size,
        "token_budget": token_budget,
        "steps": done,
        "planned_steps": steps,
        "tokens": done * batch_size * seq_len,
        "stopped_early": done < steps,
        "seconds": round(seconds, 2),
        "tokens_per_second": round(done * batch_size * seq_len / max(seconds, 1e-9), 1),
        "threads": used_threads,
        "seed": seed,
        "lr": lr,
        "min_lr_ratio": min_lr_ratio,
        "warmup_steps": _warmup_steps(steps, warmup_fraction),
        "weight_decay": weight_decay,
        "grad_clip": grad_clip,
        "train_ppl": train_ppl,
        "heldout_ppl": heldout_ppl,
        "eval_windows": {"train": len(train_windows), "heldout": len(heldout)},
        "corpus": {
            "name": corpus.name,
            "sha256": corpus.sha256,
            "train_tokens": len(train_ids),
            "heldout_tokens": len(heldout_ids),
        },
        "tokenizer": {"path": tokenizer_dir, "vocab_size": len(tokenizer)},
        "loss_curve": curve,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / TRAINING_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# --------------------------------------------------------------------------------------------------


def _check_numbers(seq_len, token_budget, batch_size, lr, min_lr_ratio, warmup_fraction, max_minutes) -> None:
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if token_budget < batch_size * seq_len:
        raise ValueError(
            f"token_budget {token_budget} is less than one step of {batch_size} x {seq_len} tokens"
        )
    if not lr > 0 or not 0 <= min_lr_ratio <= 1 or not 0 <= warmup_fraction < 1:
        raise ValueError("need lr > 0, 0 <= min_lr_ratio <= 1 and 0 <= warmup_fraction < 1")
    if max_minutes is not None and not max_minutes > 0:
        raise ValueError(f"max_minutes must be > 0 or None, got {max_minutes}")


def _resolve_tokenizer(tokenizer, corpus: Corpus, vocab_size: int, out_dir: Path):
    """(tokenizer, its directory or None, whether it still has to be saved there).

    An object is used as given; otherwise the shared directory's tokenizer is loaded, or trained in
    memory and left for the caller to save once the rest of the input has been checked.
    """
    if isinstance(tokenizer, PreTrainedTokenizerBase):
        if tokenizer.bos_token_id is None:
            raise ValueError("the reference models need a tokenizer with a BOS token")
        return tokenizer, tokenizer.name_or_path or None, False
    directory = Path(tokenizer).expanduser() if tokenizer is not None else out_dir.parent / "tokenizer"
    unsaved = not has_tokenizer(directory)
    text = corpus.tokenizer_text()
    return load_or_train_tokenizer(directory, text, vocab_size, save=False), str(directory), unsaved


def _data_order(n_tokens: int, text_len: int, n_windows: int, seed: int) -> torch.Tensor:
    """Start offsets of ``n_windows`` training windows: epochs of shuffled, non-overlapping tiles.

    Each epoch starts the tiling at a random offset (so window boundaries move between epochs) and
    visits every tile once in a random order.  Uses its own generator, leaving the global RNG alone.
    """
    generator = torch.Generator().manual_seed(seed)
    chunks, total = [], 0
    while total < n_windows:
        offset = int(torch.randint(0, text_len, (1,), generator=generator))
        if (n_tokens - offset) // text_len < 1:
            offset = 0
        count = (n_tokens - offset) // text_len
        tiles = offset + text_len * torch.randperm(count, generator=generator)
        chunks.append(tiles)
        total += count
    return torch.cat(chunks)[:n_windows]


def _windows(stream: torch.Tensor, starts: torch.Tensor, text_len: int, bos: int) -> torch.Tensor:
    index = starts[:, None] + torch.arange(text_len)[None, :]
    return torch.cat([torch.full((len(starts), 1), bos, dtype=torch.long), stream[index]], dim=1)


def _tile(stream: torch.Tensor, text_len: int, bos: int, max_windows: int) -> torch.Tensor:
    """Consecutive windows from the start of ``stream`` (at most ``max_windows``), for evaluation."""
    count = min(len(stream) // text_len, max_windows)
    return _windows(stream, text_len * torch.arange(count), text_len, bos)


def _warmup_steps(steps: int, warmup_fraction: float) -> int:
    return max(1, round(steps * warmup_fraction)) if warmup_fraction > 0 else 0


def _lr_lambda(steps: int, warmup: int, min_ratio: float):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def _param_groups(model: PreTrainedModel, weight_decay: float) -> list[dict]:
    """Decay matrices only; SSM dynamics (A_log) and all vectors are left undecayed, as is usual."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (decay if param.ndim >= 2 and not name.endswith("A_log") else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _fit(
    model, stream, starts, text_len, bos, batch_size, steps, lr, min_lr_ratio, warmup_fraction,
    weight_decay, grad_clip, max_minutes, progress, arch,
) -> tuple[list[float], float, int]:  # fmt: skip
    """The optimisation loop; returns (per-step losses, seconds, steps done)."""
    from tqdm.auto import tqdm

    model.train()
    optimizer = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.95), eps=1e-8)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(steps, _warmup_steps(steps, warmup_fraction), min_lr_ratio)
    )
    curve: list[float] = []
    began = time.perf_counter()
    bar = tqdm(total=steps, desc=f"train {arch}", unit="step", disable=not progress)
    done = 0
    for step in range(steps):
        batch = _windows(stream, starts[step * batch_size : (step + 1) * batch_size], text_len, bos)
        logits = model(input_ids=batch).logits[:, :-1].float()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{arch}: loss became {loss.item()} at step {step}; try a lower lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        schedule.step()
        curve.append(round(loss.item(), 5))
        done = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{curve[-1]:.3f}")
        if max_minutes is not None and time.perf_counter() - began > 60 * max_minutes:
            break
    bar.close()
    return curve, time.perf_counter() - began, done


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    """Deterministic kernels while training; the caller's setting is restored afterwards."""
    previous = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=warn_only)


@contextlib.contextmanager
def _threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` inside the block (None: leave it alone)."""
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
