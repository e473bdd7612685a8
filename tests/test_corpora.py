"""Any text for calibration and perplexity (statlab.corpora): files, dataset specs, PTB / C4 plumbing, windows.

Nothing here downloads: the hub routes run against a monkeypatched ``datasets.load_dataset``.
"""

from __future__ import annotations

import hashlib
import json
import math

import datasets
import pytest
import tokenizers
import torch
import torch.nn.functional as F
import transformers

from statlab import calibration, cli, corpora

from .test_cli_errors import no_loading, one_line_error, run  # noqa: F401 (no_loading: a fixture)
from .test_llama import tiny_llama

WORDS = ("the a of and to in is was that for on with he said it by as at from his her they we you this be "
         "are not have had were been which one all their there an or but so if no when who what more up out "
         "time year new first last only also after over two into some other than then its could would").split()


def word_tokenizer(directory=None):
    """A word-level tokenizer over :data:`WORDS` (unknown words -> ``<unk>``), saved to ``directory`` if given."""
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "<pad>"] + WORDS)}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                                     eos_token="</s>", pad_token="<pad>")
    if directory is not None:
        tokenizer.save_pretrained(directory)
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    return tokenizer


def save_tiny_llama(directory, dtype=torch.float32):
    """A tiny random Llama (vocab 96, 64 positions) with :func:`word_tokenizer`, as ``save_pretrained`` writes it."""
    model = tiny_llama(dtype=dtype)
    assert len(word_tokenizer()) <= model.config.vocab_size
    model.save_pretrained(directory)
    word_tokenizer(directory)
    return directory


@pytest.fixture
def tiny_llama_dir(tmp_path):
    return save_tiny_llama(tmp_path / "tiny-llama")


def prose(n_words, seed=0):
    g = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, len(WORDS), (n_words,), generator=g).tolist()
    lines = [" ".join(WORDS[i] for i in picks[k:k + 12]) for k in range(0, n_words, 12)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- files

def test_a_text_file_is_its_lines_and_its_running_text(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("  first line \n\n second\n\n\nthird\n")
    corpus = corpora.read_file(path)
    assert corpus.examples == ("first line", "second", "third")
    assert corpus.text == path.read_text()  # the running text is the file as it is
    data = path.read_bytes()
    assert corpus.source == {"path": str(path.resolve()), "bytes": len(data),
                             "sha256": hashlib.sha256(data).hexdigest(), "format": "txt"}


def test_a_jsonl_file_is_its_text_fields(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"text": "one doc", "id": 1}) + "\n\n" + json.dumps({"text": " two ", "id": 2}) + "\n")
    corpus = corpora.read_file(path)
    assert corpus.examples == ("one doc", "two") and corpus.text == "one doc\n\n two "
    assert corpus.source["text_field"] == "text" and corpus.source["format"] == "jsonl"
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"body": "x y"}) + "\n")
    assert corpora.read_file(other, text_field="body").examples == ("x y",)


BAD_FILES = [
    ("empty.txt", b"", "holds no text (empty)"),
    ("blank.txt", b"\n  \n\t\n", "holds no text (only blank lines)"),
    ("nul.txt", b"\x89PNG\x00\x00", "is a binary file (it holds NUL bytes)"),
    ("latin1.txt", "caf\xe9".encode("latin-1"), "is not UTF-8 text (invalid byte at offset 3)"),
    ("notes.md", b"some text", "expected a .txt file (plain text) or a .jsonl file"),
    ("bad.jsonl", b'{"text": "ok"}\n{oops\n', "line 2 is not JSON"),
    ("list.jsonl", b'["a"]\n', "line 1 is a JSON list, not an object"),
    ("field.jsonl", b'{"body": "a"}\n', "line 1 has no 'text' field (its fields: 'body')"),
    ("number.jsonl", b'{"text": 3}\n', "line 1: field 'text' is a JSON int, not a string"),
    ("hollow.jsonl", b'{"text": " "}\n', "every 'text' field is empty"),
]


@pytest.mark.parametrize("name, content, fragment", BAD_FILES)
def test_files_that_hold_no_usable_text_are_named(tmp_path, name, content, fragment):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(corpora.CorpusError) as caught:
        corpora.read_file(path)
    assert fragment in str(caught.value)


def test_missing_files_directories_and_misplaced_fields(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        corpora.read_file(tmp_path / "nope.txt")
    with pytest.raises(corpora.CorpusError, match="is a directory"):
        corpora.read_file(tmp_path)
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(corpora.CorpusError, match="names a field of .jsonl lines"):
        corpora.read_file(tmp_path / "a.txt", text_field="body")


# --------------------------------------------------------------------------- dataset specs

@pytest.mark.parametrize("spec, parsed", [
    ("imdb:train", ("imdb", None, "train", None)),
    ("Salesforce/wikitext:wikitext-2-raw-v1:train:text", ("Salesforce/wikitext", "wikitext-2-raw-v1", "train", "text")),
    ("nyu-mll/glue:sst2:validation", ("nyu-mll/glue", "sst2", "validation", None)),
    ("imdb:train:text", ("imdb", None, "train", "text")),
    ("imdb:train[:1000]:text", ("imdb", None, "train[:1000]", "text")),
    ("nyu-mll/glue::train:sentence", ("nyu-mll/glue", None, "train", "sentence")),
    ("nyu-mll/glue:mnli:validation_matched", ("nyu-mll/glue", "mnli", "validation_matched", None)),
    ("corpus:all:custom_split:body", ("corpus", "all", "custom_split", "body")),
])
def test_dataset_specs_parse_and_print_back(spec, parsed):
    result = corpora.parse_dataset_spec(spec)
    assert (result.name, result.config, result.split, result.column) == parsed
    assert corpora.parse_dataset_spec(str(result)) == result


@pytest.mark.parametrize("spec, why", [
    ("", "it is empty"),
    ("imdb", "1 field"),
    ("a:b:c:d:e", "5 fields"),
    ("a:train:test", "both 'train' and 'test' are split names"),
    ("a:b:c", "neither 'b' nor 'c' is a split name"),
    ("a:train[:10", "unbalanced brackets"),
    (":train", "NAME '' is no hub id or path"),
    ("imdb:", "SPLIT '' is no split name"),
    ("imdb:tr ain", "SPLIT 'tr ain' is no split name"),
])
def test_dataset_specs_that_do_not_parse_name_the_form(spec, why):
    with pytest.raises(corpora.CorpusError) as caught:
        corpora.parse_dataset_spec(spec)
    assert why in str(caught.value) and "expected NAME[:CONFIG]:SPLIT[:COLUMN]" in str(caught.value)


class FakeHub:
    """Stands in for ``datasets.load_dataset``: records the calls, returns a fixed split."""

    def __init__(self, columns, fail_first=None):
        self.columns, self.calls, self.fail_first = columns, [], fail_first

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        if self.fail_first is not None and len(self.calls) == 1:
            raise self.fail_first
        return datasets.Dataset.from_dict(self.columns)


def test_a_dataset_column_through_load_dataset(monkeypatch):
    hub = FakeHub({"text": ["first row", "", "second row"], "label": [0, 1, 0]})
    monkeypatch.setattr(datasets, "load_dataset", hub)
    corpus = corpora.load_dataset_corpus("someone/corpus:cfg:train")
    assert hub.calls == [(("someone/corpus", "cfg"), {"split": "train"})]
    assert corpus.examples == ("first row", "second row") and corpus.text == "first row\n\n\n\nsecond row"
    assert corpus.source["column"] == "text" and corpus.source["rows"] == 3
    with pytest.raises(corpora.CorpusError, match="has no column 'body'; its columns: text, label"):
        corpora.load_dataset_corpus("someone/corpus:train:body")
    with pytest.raises(corpora.CorpusError, match="row 0 of column 'label' is a int, not text"):
        corpora.load_dataset_corpus("someone/corpus:train:label")


def test_ptb_is_its_test_sentences_joined_with_spaces_and_falls_back_to_the_parquet_export(monkeypatch):
    hub = FakeHub({"sentence": [" a b ", "c d"]},
                  fail_first=RuntimeError("Dataset scripts are no longer supported, but found ptb_text_only.py"))
    monkeypatch.setattr(datasets, "load_dataset", hub)
    corpus = corpora.ptb_test()
    assert corpus.text == " a b  c d" and corpus.source["preprocessing"] == "sentences joined with single spaces"
    assert hub.calls[0] == ((corpora.PTB_HUB, corpora.PTB_CONFIG), {"split": "test"})
    assert hub.calls[1] == ((corpora.PTB_HUB,), {"revision": "refs/convert/parquet", "data_dir": "penn_treebank",
                                                 "split": "test"})


def test_c4_takes_seeded_documents_until_256_windows(monkeypatch):
    docs = [f"doc{i} " + " ".join(WORDS[(i + k) % len(WORDS)] for k in range(20)) for i in range(400)]
    hub = FakeHub({"text": docs, "url": ["u"] * len(docs)})
    monkeypatch.setattr(datasets, "load_dataset", hub)
    tokenizer = word_tokenizer()
    corpus = corpora.c4_validation(tokenizer, window=8, seed=3)
    assert hub.calls == [((corpora.C4_HUB,), {"data_files": {"validation": corpora.C4_SHARD}, "split": "validation"})]
    order = torch.from_numpy(__import__("numpy").random.default_rng(3).permutation(len(docs)))
    count = corpus.source["documents"]
    assert corpus.text == " ".join(docs[i] for i in order[:count].tolist())
    assert corpus.max_tokens == 256 * 8 <= len(tokenizer(corpus.text)["input_ids"])
    assert count == 128  # documents of 21 tokens: 64 hold 1344 of the 2048 needed, 128 enough
    assert corpora.c4_validation(tokenizer, window=8, seed=3) == corpus


# --------------------------------------------------------------------------- windows

def test_text_windows_are_consecutive_tokens_and_tokenised_once(tmp_path):
    tokenizer = word_tokenizer(tmp_path / "tok")  # saved: has a name_or_path, so it is cached
    text = prose(300)
    ids = tokenizer(text)["input_ids"]
    windows = corpora.text_windows(tokenizer, text, window=16)
    assert windows.shape == (len(ids) // 16, 16) and windows.reshape(-1).tolist() == ids[: windows.numel()]
    assert corpora.text_windows(tokenizer, text, window=16, max_tokens=40).shape == (2, 16)
    assert corpora.text_windows(tokenizer, text, window=16, max_tokens=100, n_windows=3).shape == (3, 16)
    calls = []
    real = type(tokenizer).__call__
    try:
        type(tokenizer).__call__ = lambda self, *a, **k: calls.append(1) or real(self, *a, **k)
        again = corpora.text_windows(tokenizer, text, window=8)
        windows[0, 0] = -1  # a caller's copy: the cache is untouched
        assert corpora.text_windows(tokenizer, text, window=16)[0, 0] != -1
        assert not calls  # served from the cache
        corpora.text_windows(tokenizer, text + " the", window=8)
        assert len(calls) == 1  # another text: tokenised
    finally:
        type(tokenizer).__call__ = real
    assert again.reshape(-1).tolist() == ids[: again.numel()]
    with pytest.raises(corpora.CorpusError, match="no whole window of 4096 tokens: notes.txt has"):
        corpora.text_windows(tokenizer, text, window=4096, name="notes.txt")


def test_sample_windows_draws_as_calibration_windows_does():
    pool = torch.arange(40).reshape(10, 4)
    batches = corpora.sample_windows(pool, 5, seed=7, batch_size=2)
    import numpy as np

    picks = np.sort(np.random.default_rng(7).choice(10, size=5, replace=False))
    assert [b["input_ids"].shape[0] for b in batches] == [2, 2, 1]
    assert torch.equal(torch.cat([b["input_ids"] for b in batches]), pool[torch.from_numpy(picks)])


# --------------------------------------------------------------------------- calibration from a corpus

def test_calibration_from_a_file_for_encoders_and_decoders(tmp_path):
    tokenizer = word_tokenizer(tmp_path / "tok")
    path = tmp_path / "calib.txt"
    path.write_text(prose(600))
    corpus = corpora.read_file(path)
    batches, calib = calibration.calibration_batches(tokenizer, "stsb", corpus=corpus, size=20, batch_size=8)
    assert calib["examples"] == 20 and calib["corpus"]["sha256"] == corpus.source["sha256"]
    assert sum(b["input_ids"].shape[0] for b in batches) == 20 and calib["source"] == "calib.txt"
    assert calib["tokens"] == sum(int(b["attention_mask"].sum()) for b in batches)
    _, everything = calibration.calibration_batches(tokenizer, "stsb", corpus=corpus)  # default: all 50 lines
    assert everything["examples"] == 50
    batches, calib = calibration.calibration_batches(tokenizer, "wikitext2", corpus=corpus, size=3, window=32, seed=1)
    pool = corpora.text_windows(tokenizer, corpus.text, window=32)
    expected = corpora.sample_windows(pool, 3, seed=1)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, expected))
    assert calib == {"source": "calib.txt windows", "examples": 3, "seed": 1, "corpus": corpus.source,
                     "window": 32, "tokens": 96}
    with pytest.raises(ValueError, match=r"1000 calibration windows of 32 tokens requested; calib.txt holds 18"):
        calibration.calibration_batches(tokenizer, "wikitext2", corpus=corpus, size=1000, window=32)
    with pytest.raises(ValueError, match="not both"):
        calibration.calibration_batches(tokenizer, "stsb", corpus=corpus, source="mrpc")


# --------------------------------------------------------------------------- the command line

@pytest.mark.parametrize("name, content, fragment", [("missing.txt", None, "does not exist")] + BAD_FILES)
def test_prune_refuses_bad_calibration_files_before_loading(capsys, tmp_path, no_loading, name, content, fragment):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    code, _, err = run(capsys, "prune", "--model", "smollm2", "--task", "wikitext2", "--mac-fraction", "0.8",
                       "--calibration-file", path, "--out", tmp_path / "plan")
    assert code == 2
    one_line_error(err, fragment)
    assert not (tmp_path / "plan").exists()


@pytest.mark.parametrize("argv, fragment", [
    (["--calibration-dataset", "imdb"], "does not parse (1 field): expected NAME[:CONFIG]:SPLIT[:COLUMN]"),
    (["--calibration-dataset", "a:b:c"], "neither 'b' nor 'c' is a split name"),
    (["--calibration-dataset", "imdb:train", "--calibration-source", "mrpc"], "not allowed with argument"),
    (["--text-field", "body"], "--text-field names the field of a --calibration-file .jsonl"),
])
def test_prune_refuses_bad_calibration_options(capsys, tmp_path, no_loading, argv, fragment):
    code, _, err = run(capsys, "prune", "--model", "minilm", "--task", "stsb", "--mac-fraction", "0.8", *argv,
                       "--out", tmp_path / "plan")
    assert code == 2 and fragment in err and "Traceback" not in err


def test_too_few_tokens_for_one_window_is_one_line(capsys, tmp_path, tiny_llama_dir):
    short = tmp_path / "short.txt"
    short.write_text("the a of and to in\n")
    code, _, err = run(capsys, "prune", "--model", tiny_llama_dir, "--task", "wikitext2", "--mac-fraction", "0.8",
                       "--window", "32", "--calibration-file", short, "--out", tmp_path / "plan")
    assert code == 2
    one_line_error(err, "no whole window of 32 tokens: short.txt has 6 tokens")
    code, _, err = run(capsys, "eval", tiny_llama_dir, "--text-file", short, "--window", "32")
    assert code == 2
    one_line_error(err, "no whole window of 32 tokens: short.txt has 6 tokens")


def test_eval_text_file_is_perplexity_computed_by_hand(capsys, tmp_path, tiny_llama_dir):
    path = tmp_path / "essay.txt"
    path.write_text(prose(500, seed=4))
    code, out, err = run(capsys, "eval", tiny_llama_dir, "--text-file", path, "--window", "16", "--max-tokens",
                         "160", "--json")
    assert code == 0, err
    result = json.loads(out)
    data = path.read_bytes()
    assert result["task"] == "text" and result["corpus"]["bytes"] == len(data)
    assert result["corpus"]["sha256"] == hashlib.sha256(data).hexdigest()
    # by hand: the tokenizer's ids of the whole file, the first 10 windows of 16, each scored alone
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    ids = torch.tensor(tokenizer(path.read_text())["input_ids"][:160]).reshape(10, 16)
    nll = 0.0
    with torch.no_grad():
        for window in ids:
            logits = model(input_ids=window[None]).logits[0, :-1].double()  # (15, V)
            nll -= float(F.log_softmax(logits, -1).gather(1, window[1:, None]).sum())
    assert result["metrics"]["tokens"] == 150 and result["metrics"]["windows"] == 10
    assert result["metrics"]["perplexity"] == pytest.approx(math.exp(nll / 150), rel=1e-6)


def test_calibrating_and_evaluating_on_one_file_needs_allow_overlap(capsys, tmp_path, tiny_llama_dir):
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps({"body": prose(60, seed=s)}) + "\n" for s in range(6)))
    plan = tmp_path / "plan"
    code, out, err = run(capsys, "prune", "--model", tiny_llama_dir, "--task", "wikitext2", "--mac-fraction", "0.8",
                         "--window", "16", "--calibration-size", "6", "--calibration-file", path, "--text-field",
                         "body", "--out", plan, "--json")
    assert code == 0, err
    recorded = json.loads((plan / "plan.json").read_text())["meta"]["calibration"]
    assert recorded["corpus"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert recorded["examples"] == 6 and recorded["corpus"]["text_field"] == "body"
    code, _, err = run(capsys, "eval", plan, "--text-file", path, "--text-field", "body", "--window", "16")
    assert code == 2
    one_line_error(err, "the plan was calibrated on this very text")
    code, out, err = run(capsys, "eval", plan, "--text-file", path, "--text-field", "body", "--window", "16",
                         "--allow-overlap", "--json")
    assert code == 0, err
    assert json.loads(out)["metrics"]["tokens"] > 0


def test_calibration_dataset_reaches_load_dataset(capsys, tmp_path, tiny_llama_dir, monkeypatch):
    hub = FakeHub({"content": [prose(40, seed=s) for s in range(8)]})
    monkeypatch.setattr(datasets, "load_dataset", hub)
    plan = tmp_path / "plan"
    code, out, err = run(capsys, "prune", "--model", tiny_llama_dir, "--task", "wikitext2", "--mac-fraction", "0.8",
                         "--window", "16", "--calibration-size", "4", "--calibration-dataset",
                         "someone/texts:train[:8]:content", "--out", plan, "--json")
    assert code == 0, err
    assert hub.calls == [(("someone/texts", None), {"split": "train[:8]"})]
    recorded = json.loads((plan / "plan.json").read_text())["meta"]["calibration"]
    assert recorded["corpus"]["dataset"] == "someone/texts" and recorded["corpus"]["column"] == "content"
    assert recorded["tokens"] == 4 * 16
