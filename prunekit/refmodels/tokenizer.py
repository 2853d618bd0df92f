"""A small byte-level BPE tokenizer trained on the reference corpus, shared by all reference models.

The three reference architectures are only comparable if they read exactly the same token stream, so
the tokenizer is trained once and saved as an ordinary Hugging Face tokenizer directory
(``AutoTokenizer.from_pretrained`` loads it; no prunekit needed).  Byte-level BPE covers every UTF-8
string without an unknown token.  Special tokens: ``<|bos|>`` (id 0), ``<|eos|>`` (1), ``<|pad|>`` (2),
matching :class:`prunekit.refmodels.configs.SpecialIds`; encoding with ``add_special_tokens=True``
prepends BOS, which is how the models see every training window.

Training is deterministic: the BPE trainer breaks ties between equally frequent pairs by the pair
itself, and the text is fed in a fixed order.  A small ``fingerprint.json`` next to the tokenizer files
records what it was trained on, so a tokenizer directory is never silently reused for another corpus.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from .configs import SpecialIds

__all__ = [
    "SPECIAL_TOKENS",
    "has_tokenizer",
    "load_or_train_tokenizer",
    "save_tokenizer",
    "tokenizer_fingerprint",
    "train_tokenizer",
]

#: Special tokens in id order (their ids are their positions).
SPECIAL_TOKENS: tuple[str, ...] = ("<|bos|>", "<|eos|>", "<|pad|>")
_FINGERPRINT = "fingerprint.json"


def tokenizer_fingerprint(text: str, vocab_size: int) -> dict:
    """What a tokenizer trained by :func:`train_tokenizer` depends on: the text's hash and the size."""
    return {"text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "vocab_size": vocab_size}


def train_tokenizer(text: str, vocab_size: int = 4096, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer of ``vocab_size`` entries (special tokens included) on ``text``.

    Raises:
        ValueError: empty text, or a vocabulary too small for the 256 byte symbols plus specials.
    """
    base = 256 + len(SPECIAL_TOKENS)
    if vocab_size < base:
        raise ValueError(f"vocab_size must be >= {base} (256 bytes + {len(SPECIAL_TOKENS)} specials)")
    if not text.strip():
        raise ValueError("cannot train a tokenizer on empty text")
    bos = SPECIAL_TOKENS[SpecialIds.BOS]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_lines(text), trainer=trainer)
    core.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, SpecialIds.BOS)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=bos,
        eos_token=SPECIAL_TOKENS[SpecialIds.EOS],
        pad_token=SPECIAL_TOKENS[SpecialIds.PAD],
        model_max_length=1_000_000,  # positions are the model's business; windows are cut by prunekit
        clean_up_tokenization_spaces=False,
    )


def load_or_train_tokenizer(
    directory: str | Path, text: str, vocab_size: int = 4096, *, save: bool = True
) -> PreTrainedTokenizerFast:
    """The tokenizer saved in ``directory``, or a new one trained on ``text`` (and saved there with
    :func:`save_tokenizer` unless ``save=False``, for callers that validate more before writing).

    This is how the reference models share one tokenizer: the first training run creates the
    directory, later runs load it.  An existing directory must have been trained on the same text with
    the same ``vocab_size`` (checked against its fingerprint), so a stale tokenizer is an error rather
    than a silent mismatch.

    Raises:
        ValueError: the directory holds a tokenizer for other text or another vocab size, or is a
            non-empty directory without a prunekit tokenizer fingerprint.
    """
    directory = Path(directory).expanduser()
    wanted = tokenizer_fingerprint(text, vocab_size)
    if has_tokenizer(directory):
        return _load_checked(directory, wanted)
    if directory.is_file() or (directory.is_dir() and any(directory.iterdir())):
        raise ValueError(f"{directory} is not empty and holds no reference tokenizer (no {_FINGERPRINT})")
    tokenizer = train_tokenizer(text, vocab_size)
    return save_tokenizer(tokenizer, directory, text, vocab_size) if save else tokenizer


def has_tokenizer(directory: str | Path) -> bool:
    """Whether ``directory`` holds a tokenizer saved by :func:`save_tokenizer`."""
    return (Path(directory).expanduser() / _FINGERPRINT).is_file()


def save_tokenizer(
    tokenizer: PreTrainedTokenizerFast, directory: str | Path, text: str, vocab_size: int
) -> PreTrainedTokenizerFast:
    """Save ``tokenizer`` (trained on ``text`` with ``vocab_size``) with its fingerprint; returns the
    tokenizer now in ``directory``.

    It is written into a temporary sibling and renamed, so that runs started side by side never see a
    half-written tokenizer: the first rename wins and the others load the winner's (identical) files.
    """
    directory = Path(directory).expanduser()
    wanted = tokenizer_fingerprint(text, vocab_size)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        tokenizer.save_pretrained(tmp)
        (tmp / _FINGERPRINT).write_text(json.dumps(wanted, indent=2) + "\n")
        tmp.chmod(0o755)
        try:
            os.rename(tmp, directory)  # replaces an empty directory, fails on a filled one
        except OSError:
            if not has_tokenizer(directory):
                raise
            return _load_checked(directory, wanted)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer


def _load_checked(directory: Path, wanted: dict) -> PreTrainedTokenizerFast:
    found = json.loads((directory / _FINGERPRINT).read_text())
    if found != wanted:
        raise ValueError(
            f"tokenizer in {directory} was trained on other text or vocab size ({found}), not on this "
            f"corpus ({wanted}); pass another --tokenizer directory or delete this one"
        )
    return AutoTokenizer.from_pretrained(directory, local_files_only=True)


def _lines(text: str, lines_per_chunk: int = 200):
    """The text in fixed chunks of whole lines: bounded memory per item and a deterministic order."""
    lines = text.splitlines(keepends=True)
    for start in range(0, len(lines), lines_per_chunk):
        yield "".join(lines[start : start + lines_per_chunk])
