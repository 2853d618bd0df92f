"""Tests for prunekit.data: corpus resolution, disjoint splits, seeded windows, BOS handling."""

from __future__ import annotations

import pytest
import torch
from conftest import make_byte_tokenizer

from prunekit import data
from prunekit.data import calibration_ids, default_text, eval_windows, load_text


def _stream(tokenizer, source=None) -> torch.Tensor:
    return data.token_stream(tokenizer, source)


def test_default_text_is_the_sorted_pydoc_topics() -> None:
    from pydoc_data.topics import topics

    text = default_text()
    assert 400_000 < len(text) < 600_000
    assert text == default_text()  # deterministic
    first, last = sorted(topics)[0], sorted(topics)[-1]
    assert text.startswith(topics[first])
    assert text.endswith(topics[last])


def test_load_text_sources(tmp_path) -> None:
    assert load_text(None) == load_text("default") == load_text("pydoc") == default_text()
    path = tmp_path / "corpus.txt"
    path.write_text("grüße, world\n", encoding="utf-8")
    assert load_text(str(path)) == "grüße, world\n"
    with pytest.raises(ValueError, match="no-such-corpus"):
        load_text("no-such-corpus")
    with pytest.raises(ValueError):
        load_text(str(tmp_path))  # a directory is not a text file


def test_shapes_dtype_and_bos(byte_tokenizer) -> None:
    calib = calibration_ids(byte_tokenizer, n_samples=5, seq_len=17, seed=1)
    evals = eval_windows(byte_tokenizer, seq_len=17, max_windows=6)
    for windows, rows in ((calib, 5), (evals, 6)):
        assert windows.shape == (rows, 17)
        assert windows.dtype == torch.long
        assert torch.all(windows[:, 0] == byte_tokenizer.bos_token_id)
        assert not torch.any(windows[:, 1:] == byte_tokenizer.bos_token_id)  # BOS never occurs in text


def test_no_bos_tokenizer_uses_all_positions_for_text() -> None:
    tokenizer = make_byte_tokenizer(with_bos=False)
    stream = _stream(tokenizer)
    split = data.split_point(len(stream), 0.8)
    evals = eval_windows(tokenizer, seq_len=10, max_windows=3)
    assert torch.equal(evals, stream[split : split + 30].view(3, 10))


def test_windows_are_slices_of_the_token_stream(byte_tokenizer) -> None:
    stream = _stream(byte_tokenizer)
    split = data.split_point(len(stream), 0.8)
    evals = eval_windows(byte_tokenizer, seq_len=9, max_windows=4)
    # Consecutive, non-overlapping, starting right at the split: BOS + 8 text tokens each.
    assert torch.equal(evals[:, 1:].reshape(-1), stream[split : split + 32])

    calib = calibration_ids(byte_tokenizer, n_samples=6, seq_len=9, seed=3)
    starts = data._calibration_starts(split, 8, 6, seed=3)
    for row, start in zip(calib, starts.tolist(), strict=True):
        assert torch.equal(row[1:], stream[start : start + 8])


def test_calibration_never_overlaps_evaluation(byte_tokenizer) -> None:
    n_tokens = len(_stream(byte_tokenizer))
    for fraction in (0.8, 0.5, 0.95):
        split = data.split_point(n_tokens, fraction)
        text_len = 63
        calib_starts = data._calibration_starts(split, text_len, n_samples=2000, seed=0)
        eval_starts = data.eval_starts(split, n_tokens, text_len, max_windows=None)
        assert int(calib_starts.min()) >= 0
        assert int((calib_starts + text_len).max()) <= split  # last calibration token < split
        assert int(eval_starts.min()) == split
        assert int((eval_starts + text_len).max()) <= n_tokens
        assert torch.all(eval_starts[1:] - eval_starts[:-1] == text_len)  # tiles, no overlap
        # The evaluation split is used nearly entirely: less than one window is dropped.
        assert n_tokens - int(eval_starts[-1] + text_len) < text_len


def test_calibration_starts_cover_exactly_the_legal_range() -> None:
    # With a split only a little longer than a window, many draws must hit every legal start -- including
    # the last one, whose window ends exactly at the split -- and nothing beyond it.
    starts = data._calibration_starts(split=70, text_len=63, n_samples=2000, seed=0)
    assert set(starts.tolist()) == set(range(8))
    assert data._calibration_starts(split=63, text_len=63, n_samples=5, seed=0).tolist() == [0] * 5


def test_split_fraction_is_respected(byte_tokenizer) -> None:
    n_tokens = len(_stream(byte_tokenizer))
    full = eval_windows(byte_tokenizer, seq_len=101)
    assert full.shape[0] == (n_tokens - int(n_tokens * 0.8)) // 100
    half = eval_windows(byte_tokenizer, seq_len=101, calib_fraction=0.5)
    assert half.shape[0] > 2 * full.shape[0]
    with pytest.raises(ValueError):
        eval_windows(byte_tokenizer, calib_fraction=1.0)


def test_seeded_determinism(byte_tokenizer) -> None:
    before = torch.random.get_rng_state()
    a = calibration_ids(byte_tokenizer, n_samples=8, seq_len=32, seed=7)
    b = calibration_ids(byte_tokenizer, n_samples=8, seq_len=32, seed=7)
    c = calibration_ids(byte_tokenizer, n_samples=8, seq_len=32, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(torch.random.get_rng_state(), before)  # global RNG untouched


def test_max_windows_caps(byte_tokenizer) -> None:
    capped = eval_windows(byte_tokenizer, seq_len=64, max_windows=3)
    full = eval_windows(byte_tokenizer, seq_len=64)
    assert capped.shape[0] == 3 and full.shape[0] > 3
    assert torch.equal(capped, full[:3])
    with pytest.raises(ValueError):
        eval_windows(byte_tokenizer, max_windows=0)


def test_file_source_and_too_short_text(byte_tokenizer, tmp_path) -> None:
    path = tmp_path / "small.txt"
    path.write_text("abcdefghij" * 10, encoding="utf-8")  # 100 byte tokens: 80 calib, 20 eval
    calib = calibration_ids(byte_tokenizer, n_samples=4, seq_len=11, source=str(path))
    assert calib.shape == (4, 11)
    evals = eval_windows(byte_tokenizer, seq_len=11, source=str(path))
    assert evals.shape == (2, 11)
    assert byte_tokenizer.decode(evals[0, 1:]) == "abcdefghij"

    with pytest.raises(ValueError, match="Calibration split"):
        calibration_ids(byte_tokenizer, n_samples=1, seq_len=82, source=str(path))
    with pytest.raises(ValueError, match="Evaluation split"):
        eval_windows(byte_tokenizer, seq_len=22, source=str(path))

    # Editing the file must invalidate the in-process token cache.
    path.write_text("z" * 1000, encoding="utf-8")
    edited = eval_windows(byte_tokenizer, seq_len=11, source=str(path))
    assert byte_tokenizer.decode(edited[0, 1:]) == "z" * 10


def test_bad_arguments(byte_tokenizer) -> None:
    with pytest.raises(ValueError, match="no-such-corpus"):
        calibration_ids(byte_tokenizer, source="no-such-corpus")
    with pytest.raises(ValueError, match="seq_len"):
        calibration_ids(byte_tokenizer, seq_len=1)
    with pytest.raises(ValueError, match="n_samples"):
        calibration_ids(byte_tokenizer, n_samples=0)


def test_token_stream_is_cached(byte_tokenizer) -> None:
    assert _stream(byte_tokenizer) is _stream(byte_tokenizer)
    other = make_byte_tokenizer(with_bos=False)  # same (empty) name, different tokenizer: no collision
    assert _stream(other) is not _stream(byte_tokenizer)


@pytest.mark.slow
def test_smollm2_windows(smollm2) -> None:
    _, tokenizer = smollm2
    calib = calibration_ids(tokenizer, n_samples=32, seq_len=256, seed=0)
    evals = eval_windows(tokenizer, seq_len=256)
    assert calib.shape == (32, 256)
    assert torch.all(calib[:, 0] == 1) and torch.all(evals[:, 0] == 1)
    n_tokens = len(_stream(tokenizer))
    assert 100_000 < n_tokens < 130_000  # ~4.1 characters per token on the pydoc corpus
    assert evals.shape == ((n_tokens - int(0.8 * n_tokens)) // 255, 256)
    assert int(calib.max()) < len(tokenizer)
