"""Zero-shot multiple choice: the scorer agrees with log-likelihoods computed by hand from the logits."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_byte_tokenizer, make_tiny_llama

from prunekit.cli import main
from prunekit.eval.zeroshot import evaluate_task, evaluate_tasks, load_task

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "zeroshot" / "python_facts.jsonl"

ITEMS = [
    {"context": "The sky is", "choices": [" blue", " green", " a large plaid blanket"], "label": 0},
    {"context": "2 + 2 =", "choices": [" 4", " 5", " 22", " four"], "label": 0},
    {"context": "Cats say", "choices": [" meow", " woof"], "label": 0},
    {"context": "Python lists use", "choices": [" []", " {}", " ()"], "label": 0},
    {
        "context": "Water boils at",
        "choices": [" 100 C", " 10 C", " -40 C, usually, at sea level"],
        "label": 1,
    },
    {"context": "The first letter is", "choices": [" a", " z", " q"], "label": 2},
    {"context": "def f(x): return", "choices": [" x", " x + 1 if x else None", " 0"], "label": 1},
    {"context": "Ünïcode test:", "choices": [" é", " ee", " ëëë"], "label": 2},
    {"context": "", "choices": ["Start", "Begin", "Go"], "label": 0},
    {"context": "Last item,", "choices": [" yes", " no", " maybe", " perhaps so"], "label": 3},
]


def _tiny(seed: int = 2):
    model = make_tiny_llama(seed)
    model.resize_token_embeddings(300, mean_resizing=False)
    return model


@pytest.fixture
def task_file(tmp_path):
    path = tmp_path / "tiny_task.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in ITEMS))
    return path


def _by_hand(model, tok, context: str, choice: str) -> tuple[float, int]:
    """Sum of log p(choice token | everything before) for a one-token-per-byte tokenizer with BOS."""
    n_context = len(context.encode("utf-8"))  # byte tokenizer: one token per byte
    ids = [tok.bos_token_id, *tok(context + choice, add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    log_probs = torch.log_softmax(logits, dim=-1)
    scored = range(1 + n_context, len(ids))
    return float(sum(log_probs[p - 1, ids[p]] for p in scored)), len(scored)


def test_accuracy_equals_the_hand_computed_accuracy(task_file):
    model, tok = _tiny(), make_byte_tokenizer()
    result = evaluate_task(model, tok, task_file, batch_size=3)
    assert result["n"] == len(ITEMS)
    correct = correct_norm = 0
    for item, detail in zip(ITEMS, result["items"]):
        hand = [_by_hand(model, tok, item["context"], c) for c in item["choices"]]
        sums = [s for s, _ in hand]
        assert [n for _, n in hand] == detail["tokens"]
        assert all(math.isclose(a, b, rel_tol=1e-5) for a, b in zip(sums, detail["logprobs"]))
        normed = [s / len(c) for s, c in zip(sums, item["choices"])]
        correct += max(range(len(sums)), key=sums.__getitem__) == item["label"]
        correct_norm += max(range(len(normed)), key=normed.__getitem__) == item["label"]
    assert result["acc"] == correct / len(ITEMS)
    assert result["acc_norm"] == correct_norm / len(ITEMS)


def test_acc_norm_divides_by_characters_not_bytes():
    model, tok = _tiny(), make_byte_tokenizer()
    candidates = [" é", " éé", " e", " ee", " eé", " ü", " u", " ñ", " n", " ñn"]
    sums = {c: _by_hand(model, tok, "Letters:", c)[0] for c in candidates}
    items = []
    for a, b in itertools.combinations(candidates, 2):
        by_chars = sums[a] / len(a) >= sums[b] / len(b)
        if by_chars != (sums[a] / len(a.encode()) >= sums[b] / len(b.encode())):
            items.append({"context": "Letters:", "choices": [a, b], "label": 0 if by_chars else 1})
    assert items, "no pair where the two normalisations disagree; pick other candidates"
    assert evaluate_task(model, tok, items)["acc_norm"] == 1.0


def test_batch_size_does_not_change_the_scores(task_file):
    model, tok = _tiny(), make_byte_tokenizer()
    one = evaluate_task(model, tok, task_file, batch_size=1)
    many = evaluate_task(model, tok, task_file, batch_size=16)
    for a, b in zip(one["items"], many["items"]):
        assert all(math.isclose(x, y, rel_tol=1e-5) for x, y in zip(a["logprobs"], b["logprobs"]))
    assert one["acc"] == many["acc"] and one["acc_norm"] == many["acc_norm"]


def _merging_tokenizer():
    """Byte-level BPE with one merge, "a" + "b" -> "ab", so a context ending in "a" merges with "b..."."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<s>": 0, **{ch: i + 1 for i, ch in enumerate(alphabet)}}
    vocab["ab"] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b")]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>")


def test_a_token_merged_across_the_boundary_is_scored_with_the_choice():
    model, tok = _tiny(), _merging_tokenizer()
    ab, x, c = (tok.convert_tokens_to_ids(t) for t in ("ab", "x", "c"))
    assert tok("xab", add_special_tokens=False)["input_ids"] == [x, ab]
    result = evaluate_task(model, tok, [{"context": "xa", "choices": ["b", "c"], "label": 0}])
    detail = result["items"][0]
    assert detail["tokens"] == [1, 1]  # "ab" for the first choice; "c" after "a" for the second
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=torch.tensor([[0, x, ab, c]])).logits[0].double(), -1)
        merged = float(log_probs[1, ab])  # "ab" given [BOS, x]
        plain = float(
            torch.log_softmax(
                model(input_ids=torch.tensor([[0, x, tok.convert_tokens_to_ids("a")]])).logits[0].double(), -1
            )[2, c]
        )
    assert math.isclose(detail["logprobs"][0], merged, rel_tol=1e-5)
    assert math.isclose(detail["logprobs"][1], plain, rel_tol=1e-5)


VALID = json.dumps({"context": "a", "choices": [" b", " c"], "label": 1})


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ('{"context": "a", "choices": [" b"', "invalid JSON"),
        (json.dumps({"context": "a", "choices": [" b", " c"]}), r"missing key\(s\) \['label'\]"),
        (json.dumps({"choices": [" b", " c"], "label": 0}), r"missing key\(s\) \['context'\]"),
        (json.dumps({"context": "a", "choices": [" b", " c"], "label": 2}), "label 2 out of range for 2"),
        (json.dumps({"context": "a", "choices": [" b", " c"], "label": -1}), "label -1 out of range"),
        (json.dumps({"context": "a", "choices": [" b", " c"], "label": True}), "label must be an integer"),
        (json.dumps({"context": "a", "choices": [], "label": 0}), "choices must be a non-empty list"),
        (json.dumps({"context": "a", "choices": " b", "label": 0}), "choices must be a non-empty list"),
        (json.dumps({"context": "a", "choices": [" b"], "label": 0}), "at least 2 choices"),
        (json.dumps({"context": "a", "choices": [" b", ""], "label": 0}), "non-empty string"),
        (json.dumps({"context": 3, "choices": [" b", " c"], "label": 0}), "context must be a string"),
        (json.dumps([1, 2]), "expected a JSON object"),
    ],
)
def test_malformed_lines_are_reported_with_their_line_number(tmp_path, bad, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{VALID}\n\n{VALID}\n{bad}\n{VALID}\n")  # the blank line still counts: bad is line 4

    class Exploding(torch.nn.Module):
        def forward(self, *args, **kwargs):
            raise AssertionError("the model must not run on a malformed task")

    with pytest.raises(ValueError, match=f"bad.jsonl:4: .*{message}"):
        evaluate_task(Exploding(), make_byte_tokenizer(), path)


def test_empty_and_missing_files_and_unscorable_items(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="no items"):
        load_task(empty)
    with pytest.raises(ValueError, match="does not exist"):
        load_task(tmp_path / "nope.jsonl")
    item = [{"context": "", "choices": ["x", "y"], "label": 0}]
    with pytest.raises(ValueError, match="nothing to condition"):
        evaluate_task(_tiny(), make_byte_tokenizer(with_bos=False), item)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_task(_tiny(), make_byte_tokenizer(), ITEMS, batch_size=0)


def test_contexts_longer_than_the_model_lose_their_oldest_tokens():
    model, tok = _tiny(), make_byte_tokenizer()
    limit = model.config.max_position_embeddings
    long_item = {"context": "x" * (limit + 20) + " end", "choices": [" yes", " no"], "label": 0}
    result = evaluate_task(model, tok, [long_item])
    ids = tok(long_item["context"] + " yes", add_special_tokens=False)["input_ids"][-limit:]
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    expected = float(sum(log_probs[p - 1, ids[p]] for p in range(limit - 4, limit)))
    assert math.isclose(result["items"][0]["logprobs"][0], expected, rel_tol=1e-5)
    too_long = {"context": "a", "choices": [" " + "y" * limit, " n"], "label": 0}
    with pytest.raises(ValueError, match="too long"):
        evaluate_task(model, tok, [too_long])


def test_the_shipped_example_task_is_valid():
    items = load_task(EXAMPLE)
    assert len(items) >= 20 and all(len(i.choices) == 4 for i in items)
    assert len({i.label for i in items}) == 4  # the right answer is not always in the same place


def test_cli_zeroshot(tmp_path, task_file, capsys):
    model_dir = tmp_path / "tiny"
    _tiny().save_pretrained(model_dir)
    make_byte_tokenizer().save_pretrained(model_dir)
    out = tmp_path / "results.json"
    assert main(["zeroshot", "--model", str(model_dir), "--tasks", str(task_file), "--json", str(out)]) == 0
    assert "| tiny_task | 10 |" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    direct = evaluate_tasks(_tiny(), make_byte_tokenizer(), [task_file])
    assert saved["tiny_task"]["acc"] == direct["tiny_task"]["acc"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(VALID + "\n" + json.dumps({"context": "a", "choices": [" b", " c"], "label": 5}) + "\n")
    assert main(["zeroshot", "--model", str(model_dir), "--tasks", str(bad)]) == 2
    assert "bad.jsonl:2: label 5 out of range" in capsys.readouterr().err


def test_lm_eval_bridge_says_how_to_install_when_missing(monkeypatch):
    from prunekit.eval.lm_eval import evaluate_lm_eval

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # makes `import lm_eval` raise ImportError
    with pytest.raises(ImportError, match=r'pip install "prunekit\[eval\]"'):
        evaluate_lm_eval(_tiny(), make_byte_tokenizer(), ["hellaswag"])


@pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None, reason="lm-eval not installed")
def test_lm_eval_bridge_agrees_with_the_builtin_scorer_on_a_local_task(tmp_path, task_file):
    from prunekit.eval.lm_eval import evaluate_lm_eval

    # without BOS both scorers condition on exactly the context's tokens, so contexts must be
    # non-empty; ASCII only, as the harness normalises by bytes and prunekit by characters
    items = [i for i in ITEMS if i["context"] and (i["context"] + "".join(i["choices"])).isascii()]
    data = tmp_path / "local.jsonl"
    data.write_text("".join(json.dumps(i) + "\n" for i in items))
    config = {
        "task": "prunekit_local",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{context}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{label}}",
        "target_delimiter": "",
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
    }
    model, tok = _tiny(), make_byte_tokenizer(with_bos=False)
    tok.eos_token = "<s>"  # the harness needs some special token to fall back on; prunekit uses only BOS
    try:
        out = evaluate_lm_eval(model, tok, [config], log_samples=True)
    except (ConnectionError, OSError) as err:  # the harness wanted data it cannot fetch offline
        pytest.skip(f"lm-eval could not load the task data: {err}")
    harness = out["results"]["prunekit_local"]
    ours = evaluate_task(model, tok, items)
    assert harness["acc,none"] == pytest.approx(ours["acc"])
    assert harness["acc_norm,none"] == pytest.approx(ours["acc_norm"])
    for sample in out["samples"]["prunekit_local"]:  # the same log-likelihood for every choice
        theirs = [loglik for loglik, _greedy in sample["filtered_resps"]]
        assert theirs == pytest.approx(ours["items"][sample["doc_id"]]["logprobs"], rel=1e-4)
