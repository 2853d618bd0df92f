"""Reference-model training: determinism, learning, matched sizes, reloading, shared tokenizer, errors.

Everything runs on the ``micro`` configs with a 300-token vocabulary and a slice of the stdlib docs, so
a training run is a second or two.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import examples
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from prunekit.cli import main
from prunekit.data import default_text, eval_windows
from prunekit.eval import perplexity
from prunekit.families.mamba_scan import _LinearRecurrence, linear_mamba_scan
from prunekit.refmodels import ARCHS, load_corpus, parameter_counts, train_reference, train_tokenizer
from prunekit.refmodels.train import _data_order

SEQ = 32
MICRO = dict(size="micro", seq_len=SEQ, batch_size=4, eval_windows=4, progress=False)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus_file(docs_corpus_file):
    return docs_corpus_file


@pytest.fixture(scope="module")
def tokenizer(corpus_file):
    return train_tokenizer(load_corpus(corpus_file).tokenizer_text(), vocab_size=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus_file, tokenizer):
    """Two same-seed runs and one other-seed run per architecture (3 steps each)."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for arch in ARCHS:
        for name, seed in (("a", 0), ("b", 0), ("c", 1)):
            directory = root / f"{arch}-{name}"
            summary = train_reference(
                arch,
                directory,
                corpus_file,
                tokenizer=tokenizer,
                token_budget=3 * 4 * SEQ,
                seed=seed,
                **MICRO,
            )
            out[arch, name] = (directory, summary)
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_same_seed_gives_bit_identical_weights(runs, arch):
    a = load_file(runs[arch, "a"][0] / "model.safetensors")
    b = load_file(runs[arch, "b"][0] / "model.safetensors")
    c = load_file(runs[arch, "c"][0] / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert runs[arch, "a"][1]["loss_curve"] == runs[arch, "b"][1]["loss_curve"]
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the seed matters, so the check above can fail


@pytest.mark.parametrize("arch", ARCHS)
def test_reload_gives_the_same_model_and_tokenizer(runs, tokenizer, corpus_file, arch):
    directory, summary = runs[arch, "a"]
    model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True)
    loaded_tok = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    sample = default_text()[40_000:41_000]
    assert loaded_tok(sample)["input_ids"] == tokenizer(sample)["input_ids"]
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    # The recorded held-out perplexity is what prunekit's own evaluation gives for the reloaded model.
    windows = eval_windows(loaded_tok, seq_len=SEQ, max_windows=4, source=str(corpus_file))
    assert perplexity(model, windows, batch_size=8) == pytest.approx(summary["heldout_ppl"], rel=1e-6)
    # A weight missing from the file would be freshly (randomly) initialised on each load.
    again = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True)
    with torch.no_grad():
        assert torch.equal(model(windows[:2]).logits, again(windows[:2]).logits)
    recorded = json.loads((directory / "training.json").read_text())
    assert recorded["arch"] == arch and recorded["tokens"] == 3 * 4 * SEQ and recorded["seed"] == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_loss_decreases(tmp_path, corpus_file, tokenizer, arch):
    summary = train_reference(
        arch, tmp_path / arch, corpus_file, tokenizer=tokenizer, token_budget=40 * 4 * SEQ, lr=1e-2, **MICRO
    )
    curve = summary["loss_curve"]
    assert len(curve) == 40
    first, last = sum(curve[:5]) / 5, sum(curve[-5:]) / 5
    assert last < first - 0.5, (first, last)


def test_matched_default_sizes_are_within_ten_percent():
    counts = parameter_counts(vocab_size=4096, size="small")
    for kind in ("total", "non_embedding"):
        values = [counts[arch][kind] for arch in ARCHS]
        assert max(values) <= 1.10 * min(values), (kind, counts)
    assert (
        5_000_000
        <= min(c["total"] for c in counts.values())
        <= max(c["total"] for c in counts.values())
        <= 10_000_000
    )


@settings(max_examples=examples(25), deadline=None)
@given(
    n_tokens=st.integers(10, 400),
    text_len=st.integers(1, 50),
    n_windows=st.integers(1, 60),
    seed=st.integers(0, 2**31),
)
def test_data_order_stays_inside_the_training_split(n_tokens, text_len, n_windows, seed):
    assume(n_tokens >= text_len)
    starts = _data_order(n_tokens, text_len, n_windows, seed)
    assert len(starts) == n_windows
    assert int(starts.min()) >= 0 and int(starts.max()) + text_len <= n_tokens
    assert torch.equal(starts, _data_order(n_tokens, text_len, n_windows, seed))
    shortest_epoch = max(1, (n_tokens - text_len + 1) // text_len)  # tiles after the largest offset
    first = starts[:shortest_epoch].tolist()
    assert len(set(first)) == len(first)  # no window repeats within an epoch


def test_heldout_windows_match_prunekit_data(corpus_file, tokenizer):
    corpus = load_corpus(corpus_file)
    ours = corpus.heldout_windows(tokenizer, SEQ)
    assert torch.equal(ours, eval_windows(tokenizer, seq_len=SEQ, source=str(corpus_file)))
    train, heldout = corpus.split(tokenizer)
    assert len(train) + len(heldout) == len(corpus.token_stream(tokenizer))


def test_tokenizer_training_is_deterministic(corpus_file):
    text = load_corpus(corpus_file).tokenizer_text()
    a, b = train_tokenizer(text, 300), train_tokenizer(text, 300)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert (a.bos_token_id, a.eos_token_id, a.pad_token_id) == (0, 1, 2)
    assert a("x = 1")["input_ids"][0] == a.bos_token_id


def test_linear_scan_matches_transformers_scan():
    from transformers import AutoModelForCausalLM

    from prunekit.refmodels.configs import reference_config

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(reference_config("mamba", 50, "micro")).train()
    ids = torch.randint(0, 50, (2, 24))

    def forward_backward():
        model.zero_grad()
        logits = model(input_ids=ids).logits
        logits.square().mean().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    stock_out, stock_grads = forward_backward()
    with linear_mamba_scan() as swapped:
        fast_out, fast_grads = forward_backward()
    assert swapped
    torch.testing.assert_close(fast_out, stock_out, rtol=1e-5, atol=1e-5)
    for name, grad in stock_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    a = torch.rand(6, 2, 3, dtype=torch.double, requires_grad=True)
    b = torch.randn(6, 2, 3, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(_LinearRecurrence.apply, (a, b))


def test_cli_runs_share_one_tokenizer(tmp_path, corpus_file):
    common = [
        "--corpus",
        str(corpus_file),
        "--size",
        "micro",
        "--tokens",
        str(2 * 2 * SEQ),
        "--seq-len",
        str(SEQ),
    ]
    common += ["--batch-size", "2", "--vocab-size", "300", "--quiet"]
    for arch in ("llama", "mamba2"):
        assert main(["train-reference", "--arch", arch, "--out", str(tmp_path / "refs" / arch), *common]) == 0
    shared = (tmp_path / "refs" / "tokenizer" / "tokenizer.json").read_text()
    for arch in ("llama", "mamba2"):
        assert (tmp_path / "refs" / arch / "tokenizer.json").read_text() == shared
        assert json.loads((tmp_path / "refs" / arch / "training.json").read_text())["arch"] == arch


# ---- bad input: clear errors, nothing written ------------------------------------------------------


def test_unknown_arch(tmp_path, corpus_file, tokenizer):
    with pytest.raises(ValueError, match="unknown reference architecture 'gpt2'"):
        train_reference("gpt2", tmp_path / "x", corpus_file, tokenizer=tokenizer, **MICRO)
    assert not (tmp_path / "x").exists()


def test_corpus_too_small(tmp_path):
    with pytest.raises(ValueError, match="training split has .* tokens, fewer than one window"):
        train_reference("llama", tmp_path / "x", ["a tiny text."], vocab_size=300, **MICRO)
    assert list(tmp_path.iterdir()) == []  # neither the model nor the shared tokenizer was written


def test_missing_corpus_file(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="does not exist"):
        train_reference("mamba", tmp_path / "x", str(tmp_path / "nope.txt"), tokenizer=tokenizer, **MICRO)


def test_bad_numbers_and_non_empty_output(tmp_path, corpus_file, tokenizer):
    with pytest.raises(ValueError, match="less than one step"):
        train_reference("llama", tmp_path / "x", corpus_file, tokenizer=tokenizer, token_budget=10, **MICRO)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        train_reference("llama", tmp_path / "full", corpus_file, tokenizer=tokenizer, **MICRO)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_tokenizer_dir_for_another_corpus_is_refused(tmp_path, corpus_file):
    budget = dict(token_budget=4 * SEQ, vocab_size=300, **MICRO)
    train_reference("llama", tmp_path / "a" / "llama", corpus_file, **budget)
    other = tmp_path / "other.txt"
    other.write_text(default_text()[30_000:60_000])
    with pytest.raises(ValueError, match="trained on other text"):
        train_reference("llama", tmp_path / "b", other, tokenizer=tmp_path / "a" / "tokenizer", **budget)


def test_tokenizer_written_by_a_parallel_run_is_reused(tmp_path, corpus_file, monkeypatch):
    """Two runs training the shared tokenizer at once: the loser of the rename loads the winner's files."""
    from prunekit.refmodels import tokenizer as tok_module

    text = load_corpus(corpus_file).tokenizer_text()
    target = tmp_path / "tok"
    real = tok_module.train_tokenizer

    def another_run_finishes_first(t, v):
        monkeypatch.setattr(tok_module, "train_tokenizer", real)
        tok_module.load_or_train_tokenizer(target, t, v)  # the "other" run writes the directory
        return real(t, v)

    monkeypatch.setattr(tok_module, "train_tokenizer", another_run_finishes_first)
    loaded = tok_module.load_or_train_tokenizer(target, text, 300)
    assert loaded.name_or_path == str(target)  # loaded from disk, not the in-memory copy
    assert [p.name for p in tmp_path.iterdir()] == ["tok"]  # no temporary directory left behind
