"""Small matched reference models (Llama, Mamba, Mamba-2) trained from scratch on an offline corpus.

Pretrained Mamba weights cannot be installed offline, so to compare how pruning treats transformers and
state-space models prunekit trains its own: same tokenizer, same width, parameter counts within 10 %,
same tokens in the same order.  See docs/reference-models.md.
"""

from __future__ import annotations

from .configs import ARCHS, count_parameters, parameter_counts, reference_config
from .corpus import Corpus, load_corpus
from .tokenizer import load_or_train_tokenizer, train_tokenizer
from .train import DEFAULT_SEQ_LEN, DEFAULT_TOKENS, train_reference

__all__ = [
    "ARCHS",
    "Corpus",
    "DEFAULT_SEQ_LEN",
    "DEFAULT_TOKENS",
    "count_parameters",
    "load_corpus",
    "load_or_train_tokenizer",
    "parameter_counts",
    "reference_config",
    "train_reference",
    "train_tokenizer",
]
