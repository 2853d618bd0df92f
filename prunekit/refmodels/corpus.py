"""The text the reference models learn from, and its train / held-out split.

"Held-out" must mean the same tokens here as everywhere else in prunekit, so that the held-out
perplexity a reference model reports after training is the number ``prunekit eval`` and
:func:`prunekit.data.eval_windows` give for it.  The split is therefore :mod:`prunekit.data`'s: the
corpus is tokenized as one stream (no special tokens), the first ``calib_fraction`` (80 %) of the tokens
are the training split (prunekit's calibration split), the rest are held out; windows are BOS followed
by ``seq_len - 1`` corpus tokens.  The tokenizer itself is trained on the first ``calib_fraction`` of the
*characters*, so it never sees (much of) the held-out text either.

Sources: the default Python-documentation corpus from the standard library
(:func:`prunekit.data.default_text`), any UTF-8 file, a list of strings, or a ``datasets.Dataset`` text
column (texts joined by blank lines, as :func:`prunekit.data.calibration_from_texts` does).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from prunekit import data as _data

__all__ = ["Corpus", "load_corpus"]

_CALIB_FRACTION = _data.CALIB_FRACTION  # the same split as prunekit.data


@dataclass(frozen=True)
class Corpus:
    """A named text with prunekit's deterministic train / held-out split.

    ``source`` is what :func:`prunekit.data.eval_windows` accepts for the same text (``None`` for the
    default corpus, a file path for files) or None when the text came from memory.
    """

    text: str
    name: str
    source: str | None = None
    calib_fraction: float = _CALIB_FRACTION

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def tokenizer_text(self) -> str:
        """The training share of the characters, for fitting the tokenizer."""
        return self.text[: int(len(self.text) * self.calib_fraction)]

    def token_stream(self, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
        """All token ids of the text (1-D int64), no special tokens, exactly as prunekit.data makes it."""
        ids = tokenizer(self.text, add_special_tokens=False, verbose=False)["input_ids"]
        return torch.tensor(ids, dtype=torch.long)

    def split(self, tokenizer: PreTrainedTokenizerBase) -> tuple[torch.Tensor, torch.Tensor]:
        """(training tokens, held-out tokens): disjoint, contiguous, in corpus order."""
        stream = self.token_stream(tokenizer)
        cut = _data.split_point(len(stream), self.calib_fraction)
        return stream[:cut], stream[cut:]

    def heldout_windows(
        self, tokenizer: PreTrainedTokenizerBase, seq_len: int, max_windows: int | None = None
    ) -> torch.LongTensor:
        """Consecutive held-out windows ``[W, seq_len]``, identical to :func:`prunekit.data.eval_windows`.

        Raises:
            ValueError: the held-out split is shorter than one window.
        """
        stream = self.token_stream(tokenizer)
        cut = _data.split_point(len(stream), self.calib_fraction)
        text_len = _data.window_text_len(seq_len, tokenizer.bos_token_id)
        starts = _data.eval_starts(cut, len(stream), text_len, max_windows)
        return _data.gather_windows(stream, starts, text_len, tokenizer.bos_token_id)


def load_corpus(source=None, text_column: str = "text") -> Corpus:
    """Resolve a corpus: None / ``"default"`` / ``"pydoc"`` (stdlib docs), a UTF-8 file path, an existing
    :class:`Corpus`, a list of strings, or a ``datasets.Dataset`` (its ``text_column``).

    Raises:
        ValueError: a path that is not a file, a missing dataset column, or no text at all.
        TypeError: a source of another type.
    """
    if isinstance(source, Corpus):
        return source
    if source is None or isinstance(source, (str, Path)):
        key = None if source is None else str(source)
        if key is not None and key not in ("default", "pydoc") and not Path(key).expanduser().is_file():
            raise ValueError(f"corpus file {key!r} does not exist (or is not a file)")
        text = _data.load_text(key)
        name = "pydoc_data.topics" if key in (None, "default", "pydoc") else str(Path(key).expanduser())
        corpus = Corpus(text=text, name=name, source=key)
    else:
        texts = source
        if hasattr(texts, "column_names"):  # a datasets.Dataset, without importing datasets
            if text_column not in texts.column_names:
                raise ValueError(f"dataset has no column {text_column!r} (columns: {texts.column_names})")
            texts = texts[text_column]
        if not hasattr(texts, "__iter__") or not all(isinstance(t, str) for t in texts):
            raise TypeError(
                "corpus must be None, a file path, a list of strings or a datasets.Dataset with a text column"
            )
        texts = list(texts)
        corpus = Corpus(text="\n\n".join(t for t in texts if t.strip()), name=f"{len(texts)} texts")
    if not corpus.text.strip():
        raise ValueError(f"corpus {corpus.name!r} is empty")
    return corpus
