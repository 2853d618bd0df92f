"""The evaluation texts of a study: held-out text, the same text with shuffled words, another domain.

Perplexity on the held-out split says how much a model lost. The other two ask whether pruning acts as a
regularizer: if a pruned model's perplexity rises *less* (or falls) on text that is malformed (the
held-out text with the words of every line shuffled: same vocabulary, broken syntax) or shifted (another
domain, from a file), pruning removed fitting to the training text's form rather than general ability.

Every text is cut into consecutive ``seq_len`` windows the way :func:`prunekit.data.eval_windows` cuts
the held-out split (BOS first when the tokenizer has one), so all perplexities are on the same footing.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from ... import data as _data

HELDOUT = "heldout"
SHUFFLED = "shuffled"
SHIFTED = "shifted"


def heldout_text(tokenizer: Any, source: str | None) -> str:
    """The evaluation split of ``source`` as text (decoded from the very tokens the split holds)."""
    stream = _data.token_stream(tokenizer, source)
    cut = _data.split_point(len(stream), _data.CALIB_FRACTION)
    return tokenizer.decode(stream[cut:].tolist())


def shuffle_words(text: str, seed: int) -> str:
    """Every line's whitespace-separated words in a seeded random order; line breaks kept."""
    rng = random.Random(seed)
    lines = []
    for line in text.split("\n"):
        words = line.split()
        rng.shuffle(words)
        lines.append(" ".join(words))
    return "\n".join(lines)


def windows_from_text(
    tokenizer: Any, text: str, seq_len: int, max_windows: int | None, what: str
) -> torch.Tensor:
    """Consecutive windows ``[W, seq_len]`` covering ``text`` (BOS first when the tokenizer has one).

    Raises:
        ValueError: the text is shorter than one window.
    """
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    stream = torch.tensor(ids, dtype=torch.long)
    bos = tokenizer.bos_token_id
    text_len = _data.window_text_len(seq_len, bos)
    if len(stream) < text_len:
        raise ValueError(f"the {what} text has {len(stream)} tokens, fewer than one window of {text_len}")
    starts = _data.eval_starts(0, len(stream), text_len, max_windows)
    return _data.gather_windows(stream, starts, text_len, bos)


def eval_sets(
    tokenizer: Any,
    source: str | None,
    shifted: str | None,
    seq_len: int,
    max_windows: int | None,
    seed: int,
) -> dict[str, torch.Tensor]:
    """``{"heldout", "shuffled"[, "shifted"]: windows}`` for one tokenizer.

    ``shifted`` is a UTF-8 file of another domain (all of it is evaluation text: the model never saw it).

    Raises:
        ValueError: a text shorter than one window, or an unreadable ``shifted`` file.
    """
    sets = {HELDOUT: _data.eval_windows(tokenizer, seq_len=seq_len, max_windows=max_windows, source=source)}
    shuffled = shuffle_words(heldout_text(tokenizer, source), seed)
    sets[SHUFFLED] = windows_from_text(tokenizer, shuffled, seq_len, max_windows, "shuffled held-out")
    if shifted is not None:
        sets[SHIFTED] = windows_from_text(tokenizer, read_text_file(shifted), seq_len, max_windows, "shifted")
    return sets


def read_text_file(path: str) -> str:
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"shifted-domain text {path!r} is not a file")
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"shifted-domain text {path!r} is not UTF-8: {err}") from err
