"""Everything a study is asked to do, checked before any weights are loaded.

A study over three models, five methods, several components and sparsities runs for an hour; a typo in
a component name or a directory that holds an encoder must fail in the first second, with the message
naming the directory or the component. So this module reads only configs and tokenizers: it decides each
model's family (through its adapter), resolves the requested components per family, and checks that the
models share a tokenizer when their perplexities are to be read side by side.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...families import Adapter, Component, adapter_for_config
from ...families.components import ALL
from ...models import KNOWN_MODELS, load, resolve_alias


@dataclass
class ModelSpec:
    """One model of the study: where it is, what it is called in the outputs, its family's adapter."""

    source: str
    label: str
    family: str
    adapter: Adapter
    components: list[Component]
    tokenizer: Any
    #: (model, tokenizer) of a known model name, loaded while checking (its family comes from the model)
    preloaded: tuple[Any, Any] | None = None


def check_models(sources: list[str]) -> list[tuple[str, Adapter, tuple[Any, Any] | None]]:
    """(source, adapter, preloaded) for each model; refuses anything that is not a causal LM.

    A directory is checked from its config alone; a known model name (always a causal LM) is loaded,
    since its config comes with the weights, and handed on as ``preloaded`` so it is loaded only once.

    Raises:
        ValueError: empty or duplicate list, a path that is not a model directory, or a config whose
            type transformers has no causal-LM class for (an encoder, a vision model, ...).
    """
    if not sources:
        raise ValueError("the study needs at least one model")
    if len(set(sources)) != len(sources):
        raise ValueError(f"models has duplicates: {sources}")
    out = []
    for source in sources:
        if resolve_alias(source) is not None:
            model, tokenizer = load(source)
            out.append((source, adapter_for_config(model.config), (model, tokenizer)))
            continue
        path = Path(source).expanduser()
        if not path.is_dir():
            raise ValueError(
                f"model {source!r} is neither a known model name ({', '.join(sorted(KNOWN_MODELS))}) "
                "nor a directory"
            )
        if not (path / "config.json").is_file():
            raise ValueError(f"model directory {source!r} has no config.json: not a Hugging Face model")
        out.append((source, adapter_for_config(_read_config(path)), None))
    return out


def _read_config(path: Path) -> Any:
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (ValueError, KeyError, OSError, json.JSONDecodeError) as err:
        raise ValueError(f"model directory {str(path)!r}: unreadable config.json ({err})") from err
    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ValueError(
            f"model directory {str(path)!r} is not a causal language model: transformers has no causal-LM "
            f"class for its model_type {model_type!r}"
        )
    return config


def labels_for(sources: list[str]) -> list[str]:
    """Short, unique names for the outputs: the directory names, or the paths where those collide."""
    names = [Path(s).expanduser().name or s for s in sources]
    if len(set(names)) == len(names):
        return names
    return [str(Path(s).expanduser()) for s in sources]


def resolve_components(requested: list[str] | None, adapter: Adapter, source: str) -> list[Component]:
    """The components to study for one model.

    ``None`` means "all" plus every component the family declares. Otherwise each name is a component
    of every model's family, or ``family:name`` for one family only (``mamba2:ssm_heads``).

    Raises:
        ValueError: a plain name the model's family does not have, or an unknown family prefix.
    """
    if requested is None:
        return [adapter.component(ALL), *adapter.components]
    chosen = []
    for name in requested:
        family, _, bare = name.rpartition(":")
        if family and family != adapter.name:
            continue
        try:
            chosen.append(adapter.component(bare))
        except ValueError as err:
            raise ValueError(
                f"{err} (model {source!r}); name a family's component as 'family:name' to study it "
                "only where it exists"
            ) from None
    return chosen


def check_component_prefixes(requested: list[str] | None, families: set[str]) -> None:
    """Refuse ``family:name`` where no model of the study is of that family (a typo, most likely)."""
    for name in requested or []:
        family, _, _bare = name.rpartition(":")
        if family and family not in families:
            raise ValueError(
                f"component {name!r} names family {family!r}, but the study's models are: "
                f"{', '.join(sorted(families))}"
            )


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of what decides the token ids: the vocabulary, merges, normalizer and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    else:
        text = json.dumps(sorted(tokenizer.get_vocab().items()))
    specials = json.dumps([tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id])
    return hashlib.sha256((text + specials).encode("utf-8")).hexdigest()


def check_shared_tokenizer(specs: list[ModelSpec]) -> None:
    """Every model must tokenize the evaluation text identically, or the perplexities are not comparable.

    Raises:
        ValueError: naming the first two models whose tokenizers differ.
    """
    first = specs[0]
    want = tokenizer_fingerprint(first.tokenizer)
    for spec in specs[1:]:
        if tokenizer_fingerprint(spec.tokenizer) != want:
            raise ValueError(
                f"models {first.label!r} and {spec.label!r} have different tokenizers, so the shared "
                "evaluation text becomes different token windows and their perplexities cannot be "
                "compared; train them on one tokenizer, or pass allow_mixed_tokenizers=True "
                "(--allow-mixed-tokenizers) to compare only each model's relative increase"
            )


def load_tokenizer(source: str) -> Any:
    """The tokenizer of a model directory, without its weights."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(Path(source).expanduser(), local_files_only=True)
    except (OSError, ValueError) as err:
        raise ValueError(f"model directory {source!r} has no usable tokenizer: {err}") from err
