"""Calibration and evaluation token windows from an offline text corpus.

Pruning methods need calibration activations and we need held-out text to measure the damage, on
machines with no network.  The default corpus is the Python documentation topics embedded in the
standard library (``pydoc_data.topics``, ~465k characters of English prose and code), so it is always
there and identical everywhere.

The text is tokenized once and the token stream is cut into two *disjoint* contiguous parts: the first
``calib_fraction`` (80 %) for calibration, the rest for evaluation.  Keeping them disjoint matters:
calibrating on the very tokens you evaluate on flatters a pruning method.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

__all__ = ["default_text", "load_text", "calibration_ids", "calibration_from_texts", "eval_windows"]

_DEFAULT_ALIASES = frozenset({"default", "pydoc"})
_TOKEN_CACHE_SIZE = 8
#: share of the token stream used for calibration; the rest is the evaluation (held-out) split
CALIB_FRACTION = 0.8
_token_cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()


def default_text() -> str:
    """The embedded default corpus: all ``pydoc_data.topics`` entries, in sorted-key order.

    Sorting the keys makes the corpus -- and therefore every seeded calibration set -- independent of
    dict ordering.  Entries are separated by a blank line so that topics do not run into each other.
    """
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def load_text(source: str | None) -> str:
    """Resolve a corpus name: None, ``"default"`` or ``"pydoc"`` -> :func:`default_text`; a file path ->
    its UTF-8 contents.

    Raises:
        ValueError: ``source`` is neither a known corpus name nor an existing file.
    """
    if source is None or source in _DEFAULT_ALIASES:
        return default_text()
    path = Path(source).expanduser()
    if path.is_file():
        return path.read_text(encoding="utf-8")
    raise ValueError(
        f"Unknown text source {source!r}: expected None, 'default', 'pydoc' or the path of an existing "
        "UTF-8 text file."
    )


def calibration_ids(
    tokenizer: PreTrainedTokenizerBase,
    n_samples: int = 32,
    seq_len: int = 256,
    seed: int = 0,
    source: str | None = None,
    calib_fraction: float = CALIB_FRACTION,
) -> torch.LongTensor:
    """``n_samples`` random windows of ``seq_len`` tokens from the calibration split, shape ``[N, L]``.

    Windows start at uniformly random positions drawn from a ``torch.Generator`` seeded with ``seed``
    (so the global RNG is untouched and results are reproducible).  Windows may overlap each other but
    never reach into the evaluation split.  If the tokenizer has a BOS token each window is BOS followed
    by ``seq_len - 1`` text tokens, matching how the model saw documents in training.

    Raises:
        ValueError: bad arguments, or the calibration split is shorter than one window.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    stream, bos = _prepared_stream(tokenizer, source, seq_len)
    split = split_point(len(stream), calib_fraction)
    starts = _calibration_starts(split, window_text_len(seq_len, bos), n_samples, seed)
    return gather_windows(stream, starts, window_text_len(seq_len, bos), bos)


def eval_windows(
    tokenizer: PreTrainedTokenizerBase,
    seq_len: int = 256,
    max_windows: int | None = None,
    source: str | None = None,
    calib_fraction: float = CALIB_FRACTION,
) -> torch.LongTensor:
    """Consecutive non-overlapping windows covering the evaluation split, shape ``[W, L]``.

    Deterministic (no sampling) so perplexities are comparable across runs and methods.  The tail that
    does not fill a whole window is dropped.  BOS handling is as in :func:`calibration_ids`.

    Raises:
        ValueError: bad arguments, or the evaluation split is shorter than one window.
    """
    if max_windows is not None and max_windows < 1:
        raise ValueError(f"max_windows must be >= 1 or None, got {max_windows}")
    stream, bos = _prepared_stream(tokenizer, source, seq_len)
    split = split_point(len(stream), calib_fraction)
    text_len = window_text_len(seq_len, bos)
    starts = eval_starts(split, len(stream), text_len, max_windows)
    return gather_windows(stream, starts, text_len, bos)


def calibration_from_texts(
    texts,
    tokenizer: PreTrainedTokenizerBase,
    n_samples: int = 32,
    seq_len: int = 256,
    seed: int = 0,
    text_column: str = "text",
) -> torch.LongTensor:
    """Calibration windows ``[N, L]`` from a list of strings or a ``datasets.Dataset`` text column.

    The texts are joined (blank line between them), tokenized, and ``n_samples`` seeded windows are cut
    as in :func:`calibration_ids`; there is no evaluation split here, the texts are all calibration.

    Raises:
        ValueError: no tokenizer, an empty list, a missing column, or fewer tokens than one window.
        TypeError: ``texts`` is neither a list of strings nor a Dataset.
    """
    if tokenizer is None:
        raise ValueError("calibration given as text needs a tokenizer (pass tokenizer=...)")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if hasattr(texts, "column_names"):  # a datasets.Dataset, without importing datasets
        if text_column not in texts.column_names:
            raise ValueError(f"dataset has no column {text_column!r} (columns: {texts.column_names})")
        texts = texts[text_column]
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError(
            "calibration texts must be a list of strings or a datasets.Dataset with a text column"
        )
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("calibration texts are empty")
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False, verbose=False)["input_ids"]
    stream = torch.tensor(ids, dtype=torch.long)
    bos = tokenizer.bos_token_id
    text_len = window_text_len(seq_len, bos)
    starts = _calibration_starts(len(stream), text_len, n_samples, seed)
    return gather_windows(stream, starts, text_len, bos)


# --------------------------------------------------------------------------------------------------
# Internals.  The position helpers work on plain offsets so tests can check disjointness directly.


def window_text_len(seq_len: int, bos: int | None) -> int:
    """Number of corpus tokens per window (one slot goes to BOS when there is one)."""
    return seq_len - 1 if bos is not None else seq_len


def split_point(n_tokens: int, calib_fraction: float) -> int:
    """Token offset where the evaluation split begins; ``[0, split)`` is calibration."""
    if not 0.0 < calib_fraction < 1.0:
        raise ValueError(f"calib_fraction must be in (0, 1), got {calib_fraction}")
    return int(n_tokens * calib_fraction)


def _calibration_starts(split: int, text_len: int, n_samples: int, seed: int) -> torch.Tensor:
    """Seeded random start offsets such that every window ``[s, s + text_len)`` lies inside ``[0, split)``."""
    if split < text_len:
        raise ValueError(
            f"Calibration split has {split} tokens, fewer than one window of {text_len} text tokens; "
            "use a longer text or a shorter seq_len."
        )
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, split - text_len + 1, (n_samples,), generator=generator)


def eval_starts(split: int, n_tokens: int, text_len: int, max_windows: int | None) -> torch.Tensor:
    """Start offsets of consecutive windows tiling ``[split, n_tokens)``."""
    count = (n_tokens - split) // text_len
    if count < 1:
        raise ValueError(
            f"Evaluation split has {n_tokens - split} tokens, fewer than one window of {text_len} text "
            "tokens; use a longer text or a shorter seq_len."
        )
    if max_windows is not None:
        count = min(count, max_windows)
    return split + text_len * torch.arange(count)


def gather_windows(
    stream: torch.Tensor, starts: torch.Tensor, text_len: int, bos: int | None
) -> torch.Tensor:
    """Stack ``stream[s : s + text_len]`` for each start, prefixed with BOS when given."""
    index = starts[:, None] + torch.arange(text_len)[None, :]
    windows = stream[index]
    if bos is not None:
        prefix = torch.full((windows.shape[0], 1), bos, dtype=torch.long)
        windows = torch.cat([prefix, windows], dim=1)
    return windows


def _prepared_stream(
    tokenizer: PreTrainedTokenizerBase, source: str | None, seq_len: int
) -> tuple[torch.Tensor, int | None]:
    """Validate ``seq_len`` and return (token stream, BOS id or None)."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2 (one token to condition on, one to predict), got {seq_len}")
    bos = tokenizer.bos_token_id
    return token_stream(tokenizer, source), bos


def _source_key(source: str | None) -> tuple:
    """Cache key for a source; files include size and mtime so an edited file is re-tokenized."""
    if source is None or source in _DEFAULT_ALIASES:
        return ("default",)
    path = Path(source).expanduser()
    if path.is_file():
        stat = path.stat()
        return ("file", str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    return ("unknown", source)  # load_text will raise


def token_stream(tokenizer: PreTrainedTokenizerBase, source: str | None) -> torch.Tensor:
    """Whole-corpus token ids (1-D int64), LRU-cached per (tokenizer, source) within the process.

    The key uses the tokenizer's ``name_or_path`` plus its size and special ids, so two different
    tokenizers that happen to share an (often empty) name do not collide.  The cached tensor is only ever
    indexed (which copies), never handed out, so callers cannot corrupt it.
    """
    key = (
        type(tokenizer).__qualname__,
        tokenizer.name_or_path,
        len(tokenizer),
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        _source_key(source),
    )
    cached = _token_cache.get(key)
    if cached is not None:
        _token_cache.move_to_end(key)
        return cached
    text = load_text(source)
    # verbose=False: the corpus is far longer than model_max_length, and the "sequence longer than the
    # specified maximum" warning is irrelevant because we only ever feed seq_len-sized windows.
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    stream = torch.tensor(ids, dtype=torch.long)
    _token_cache[key] = stream
    while len(_token_cache) > _TOKEN_CACHE_SIZE:
        _token_cache.popitem(last=False)
    return stream
