"""BESA (Xu et al., ICLR 2024): each row's sparsity is learned so that every block's output error is
minimal while the block meets the target (see :mod:`prunekit.methods.besa` for the masks).

The scorer holds the options and ranks the weights of each row with its ``importance`` method (Wanda's
``|W|·||X||`` by default, or ``magnitude`` or ``sparsegpt``'s ``w²/[H⁻¹]²``); the block-wise training
itself is an executor of the engine (``prunekit.engine.besa``), which every scorer with
``learns_allocation`` runs instead of the layer-wise one.

N:M is refused: the pattern fixes every row's sparsity, so there is nothing to learn.

The paper's code trains with Prodigy (lr 1), whose step size adapts; its AdamW alternative uses lr 1e-2.
Without Prodigy (an optional package) AdamW is the default here, at lr 0.1: on SmolLM2-135M at 50 %
it gave 73.2 perplexity on *Emma* against 74.1 at 1e-2 and 73.7 at 0.3 (BENCHMARKS.md).
"""

from __future__ import annotations

import importlib.util

from ..besa import candidate_count
from .base import Scorer, get_scorer, register_scorer

IMPORTANCES = ("wanda", "magnitude", "sparsegpt")
OPTIMIZERS = {"adamw": 0.1, "prodigy": 1.0}  # name -> default learning rate (see the module docstring)
REFERENCES = ("pruned", "dense")


@register_scorer
class BESA(Scorer):
    name = "besa"
    structures = ("unstructured",)
    default_granularity = "row"
    #: the engine trains row sparsities block by block instead of pruning each matrix on its own
    learns_allocation = True
    options = {
        "importance": "wanda",
        "step": 0.01,
        "row_block": 1,
        "beta": 5.0,
        "epochs": 1,
        "optimizer": "adamw",
        "lr": None,
        "reference": "pruned",
        "smooth": True,
        "spread": 1.0,
        "lora_rank": 0,
        "lora_lr": 1e-4,
    }

    def __init__(self, **options) -> None:
        super().__init__(**options)
        c = self.config
        _choice("importance", c["importance"], IMPORTANCES)
        _choice("optimizer", c["optimizer"], tuple(OPTIMIZERS))
        _choice("reference", c["reference"], REFERENCES)
        candidate_count(c["step"])
        _whole("row_block", c["row_block"], 1)
        _whole("epochs", c["epochs"], 1)
        _whole("lora_rank", c["lora_rank"], 0)
        beta = c["beta"]
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or beta < 0:
            raise ValueError(f"besa option beta must be a number >= 0, got {beta!r}")
        for key in ("lr", "lora_lr"):
            value = c[key]
            if (value is not None or key == "lora_lr") and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0
            ):
                raise ValueError(f"besa option {key} must be a number > 0, got {value!r}")
        spread = c["spread"]
        if isinstance(spread, bool) or not isinstance(spread, (int, float)) or not 0 < spread <= 50:
            raise ValueError(f"besa option spread must be a number in (0, 50], got {spread!r}")
        if not isinstance(c["smooth"], bool):
            raise ValueError(f"besa option smooth must be True or False, got {c['smooth']!r}")
        if "lora_lr" in options and not c["lora_rank"]:
            raise ValueError("besa option lora_lr is only used with lora_rank > 0")
        if "spread" in options and not c["smooth"]:
            raise ValueError("besa option spread is only used with smooth=True")
        if c["optimizer"] == "prodigy" and importlib.util.find_spec("prodigyopt") is None:
            raise ValueError(
                "besa option optimizer='prodigy' needs the prodigyopt package: pip install 'prunekit[besa]'"
            )

    def importance(self) -> Scorer:
        return get_scorer(self.config["importance"])

    def statistics(self):
        importance = self.config.get("importance")
        return get_scorer(importance).requires if importance in IMPORTANCES else ()

    def weight_scores(self, weight, stats=None):
        """The importance that ranks each row's weights (what the learned counts cut from below)."""
        return self.importance().weight_scores(weight, stats)

    @property
    def learning_rate(self) -> float:
        lr = self.config["lr"]
        return float(OPTIMIZERS[self.config["optimizer"]] if lr is None else lr)


def _choice(key: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"besa option {key}={value!r} is not one of {allowed}")


def _whole(key: str, value, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"besa option {key} must be an integer >= {lo}, got {value!r}")
