"""The typed request of one recovery call: :class:`RecoverySpec`, built and validated by
:func:`build_recovery_spec`.

Recovery retrains a small set of parameters of a pruned model so that it gets back what pruning cost
(PERP: biases, normalisation weights, the LM head and low-rank adapters whose update keeps every pruned
weight at zero). Python (:func:`prunekit.recover`), recipes (a ``recover:`` stage) and the command line
(``prunekit recover``) all build their request here, so each mistake has one message, raised before the
model is touched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .build import patterns
from .options import SpecError, SpecTypeError

METHODS = ("perp",)
MODES = ("retrain", "reconstruct")
#: what can be trained; ``lm_head`` and the final norm lie outside the blocks, so only retraining reaches them
TRAINABLE = ("biases", "norms", "lm_head", "lora")
DEFAULT_TRAIN = {
    "retrain": ("biases", "norms", "lm_head", "lora"),
    "reconstruct": ("biases", "norms", "lora"),
}
#: MaskLoRA W + (α/r)·(BA ⊙ 1[W≠0]); ScaleLoRA W ⊙ BA; plain LoRA W + (α/r)·BA, masked when merged
LORA_KINDS = ("mask", "scale", "plain")
SCHEDULES = ("linear", "constant")

#: option -> (default, help); every front end lists these
RECOVERY_OPTIONS: dict[str, tuple[Any, str]] = {
    "train": (None, "what to train: any of biases, norms, lm_head, lora (default: all four for retrain, "
                    "all but lm_head for reconstruct)"),
    "lora": ("mask", "adapter kind: mask (MaskLoRA), scale (ScaleLoRA) or plain (LoRA, masked at merge)"),
    "rank": (16, "LoRA rank r"),
    "alpha": (None, "LoRA scale numerator α (update scaled by α/r; default 2r; not used by ScaleLoRA)"),
    "lora_targets": (None, "modules that get adapters (names, dotted suffixes, 're:' patterns; default: "
                           "every Linear inside the blocks)"),
    "create_biases": (False, "give the adapted modules a zero bias where they have none, and train it"),
    "lr": (5e-4, "AdamW learning rate"),
    "weight_decay": (0.0, "AdamW weight decay"),
    "warmup": (0.1, "share of the steps spent warming the learning rate up linearly from zero"),
    "schedule": ("linear", "learning-rate schedule after warm-up: linear (decay to zero) or constant"),
    "steps": (None, "optimizer steps (retrain: in all; reconstruct: per block); default: one pass over "
                    "the data"),
    "tokens": (None, "retrain: a token budget instead of steps"),
    "epochs": (None, "passes over the data when steps and tokens are not given (default: 1 for "
                     "retrain, 8 for reconstruct)"),
    "batch_size": (None, "sequences per optimizer step (default: 8 for retrain, 4 for reconstruct)"),
    "gradient_checkpointing": (True, "retrain: recompute block activations in the backward (less memory)"),
    "n_samples": (None, "windows cut from text data (default: 256 for retrain, 32 for reconstruct)"),
    "seq_len": (256, "tokens per window cut from text data"),
    "seed": (0, "seed of the windows cut from text and of the adapters' initialisation"),
    "eval_windows": (16, "held-out windows for perplexity before and after (0: not measured)"),
    "text_column": ("text", "column of a datasets.Dataset holding the text"),
    "progress": (False, "progress bars with the loss"),
}  # fmt: skip


@dataclass(frozen=True)
class RecoverySpec:
    """What one recovery call asks for, validated. Build it with :func:`build_recovery_spec`."""

    method: str = "perp"
    mode: str = "retrain"
    train: tuple[str, ...] = DEFAULT_TRAIN["retrain"]
    #: whether ``train`` was given (a default set the model lacks, such as Llama's biases, is skipped)
    train_given: bool = False
    lora: str = "mask"
    rank: int = 16
    alpha: float = 32.0
    lora_targets: tuple[str, ...] | None = None
    create_biases: bool = False
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup: float = 0.1
    schedule: str = "linear"
    steps: int | None = None
    tokens: int | None = None
    epochs: int = 1
    batch_size: int = 8
    gradient_checkpointing: bool = True
    n_samples: int = 256
    seq_len: int = 256
    seed: int = 0
    eval_windows: int = 16
    text_column: str = "text"
    progress: bool = field(default=False, compare=False)
    tokenizer: Any = field(default=None, compare=False, repr=False)

    @property
    def scaling(self) -> float:
        """The factor α/r of an additive update."""
        return self.alpha / self.rank

    def steps_for(self, n_windows: int) -> int:
        """Optimizer steps over ``n_windows`` training windows: ``steps``, or the token budget, or
        ``epochs`` passes."""
        if self.steps is not None:
            return self.steps
        if self.tokens is not None:
            return max(1, math.ceil(self.tokens / (self.batch_size * self.seq_len)))
        return self.epochs * math.ceil(n_windows / self.batch_size)

    def options(self) -> dict[str, Any]:
        """Every option by name (reports and records show these)."""
        return {k: getattr(self, k) for k in RECOVERY_OPTIONS if k != "progress"} | {"mode": self.mode}


def build_recovery_spec(method: str = "perp", mode: str = "retrain", **options: Any) -> RecoverySpec:
    """Validate a recovery request; raises :class:`SpecError` naming the key of the first mistake."""
    if not isinstance(method, str) or method not in METHODS:
        raise SpecError(f"unknown recovery method {method!r}; available: {', '.join(METHODS)}", "method")
    if mode not in MODES:
        raise SpecError(f"recovery mode must be one of {MODES}, got {mode!r}", "mode")
    unknown = sorted(set(options) - set(RECOVERY_OPTIONS) - {"tokenizer"})
    if unknown:
        raise SpecError(
            f"unknown recovery option(s) {unknown}; options are: {', '.join(RECOVERY_OPTIONS)}", unknown[0]
        )
    v = {k: options.get(k, d) for k, (d, _h) in RECOVERY_OPTIONS.items()}
    train = _train(v["train"], mode)
    lora = _choice("lora", v["lora"], LORA_KINDS)
    rank = _integer("rank", v["rank"], 1)
    alpha = _alpha(options, lora, rank)
    _refuse_unused(options, mode, train, lora)
    if mode == "reconstruct" and (options.get("tokens") is not None):
        raise SpecError("tokens is a retrain budget; reconstruct takes steps per block", "tokens")
    if v["steps"] is not None and v["tokens"] is not None:
        raise SpecError("give steps or tokens, not both", "tokens")
    return RecoverySpec(
        method=method,
        mode=mode,
        train=train,
        train_given=options.get("train") is not None,
        lora=lora,
        rank=rank,
        alpha=alpha,
        lora_targets=patterns(v["lora_targets"], "lora_targets"),
        create_biases=_flag("create_biases", v["create_biases"]),
        lr=_real("lr", v["lr"], 0.0, 10.0, open_low=True),
        weight_decay=_real("weight_decay", v["weight_decay"], 0.0, 10.0),
        warmup=_real("warmup", v["warmup"], 0.0, 1.0, open_high=True),
        schedule=_choice("schedule", v["schedule"], SCHEDULES),
        steps=None if v["steps"] is None else _integer("steps", v["steps"], 1),
        tokens=None if v["tokens"] is None else _integer("tokens", v["tokens"], 1),
        epochs=_integer("epochs", _by_mode(v["epochs"], mode, 1, 8), 1),
        batch_size=_integer("batch_size", _by_mode(v["batch_size"], mode, 8, 4), 1),
        gradient_checkpointing=_flag("gradient_checkpointing", v["gradient_checkpointing"]),
        n_samples=_integer("n_samples", _by_mode(v["n_samples"], mode, 256, 32), 1),
        seq_len=_integer("seq_len", v["seq_len"], 2),
        seed=_integer("seed", v["seed"], 0),
        eval_windows=_integer("eval_windows", v["eval_windows"], 0),
        text_column=_text("text_column", v["text_column"]),
        progress=_flag("progress", v["progress"]),
        tokenizer=options.get("tokenizer"),
    )


def _by_mode(value: Any, mode: str, retrain: Any, reconstruct: Any) -> Any:
    """``value``, or the mode's default when it is None."""
    if value is not None:
        return value
    return retrain if mode == "retrain" else reconstruct


def _train(value: Any, mode: str) -> tuple[str, ...]:
    if value is None:
        return DEFAULT_TRAIN[mode]
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(t, str) for t in items):
        raise SpecTypeError(f"train must be a non-empty list of {TRAINABLE}, got {value!r}", "train")
    bad = [t for t in items if t not in TRAINABLE]
    if bad:
        raise SpecError(f"train: {bad} are not trainable sets; choose from {TRAINABLE}", "train")
    if mode == "reconstruct" and "lm_head" in items:
        raise SpecError(
            "train: lm_head lies outside the blocks, and reconstruct fits each block's outputs; "
            "use mode='retrain' to train the head",
            "train",
        )
    return tuple(t for t in TRAINABLE if t in items)


def _alpha(options: dict[str, Any], lora: str, rank: int) -> float:
    if options.get("alpha") is None:
        return 2.0 * rank
    if lora == "scale":
        raise SpecError(
            "alpha scales an additive update; ScaleLoRA (lora='scale') multiplies instead", "alpha"
        )
    return _real("alpha", options["alpha"], 0.0, 1e6, open_low=True)


def _refuse_unused(options: dict[str, Any], mode: str, train: tuple[str, ...], lora: str) -> None:
    """An option the request would not use is an error naming it."""
    low_rank = ("lora", "rank", "alpha")  # the adapters and the LM head's update
    if "lora" not in train:
        given = [k for k in (*low_rank, "lora_targets") if options.get(k) is not None]
        given = [k for k in given if k == "lora_targets" or "lm_head" not in train]
        if given:
            raise SpecError(f"{given[0]} configures the adapters, but train has no 'lora'", given[0])
    if options.get("create_biases") and "biases" not in train:
        raise SpecError("create_biases makes biases to train, but train has no 'biases'", "create_biases")
    retrain_only = ("tokens", "gradient_checkpointing")
    if mode == "reconstruct":
        given = [k for k in retrain_only if options.get(k) is not None]
        if given:
            raise SpecError(f"{given[0]} applies to mode='retrain' only", given[0])


def _choice(key: str, value: Any, allowed: tuple) -> Any:
    if value not in allowed:
        raise SpecError(f"{key}={value!r} is not one of {allowed}", key)
    return value


def _integer(key: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecTypeError(f"{key} must be an integer, got {value!r}", key)
    if value < lo:
        raise SpecError(f"{key} must be >= {lo}, got {value}", key)
    return int(value)


def _real(key: str, value: Any, lo: float, hi: float, open_low=False, open_high=False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise SpecTypeError(f"{key} must be a number, got {value!r}", key)
    low_bad = value <= lo if open_low else value < lo
    high_bad = value >= hi if open_high else value > hi
    if low_bad or high_bad:
        interval = f"{'(' if open_low else '['}{lo}, {hi}{')' if open_high else ']'}"
        raise SpecError(f"{key} must lie in {interval}, got {value}", key)
    return float(value)


def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SpecTypeError(f"{key} must be true or false, got {value!r}", key)
    return value


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise SpecTypeError(f"{key} must be a non-empty string, got {value!r}", key)
    return value
