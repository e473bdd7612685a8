"""Task models (the paper's protocol): loaded with their heads, pruned below them, scored by them, fine-tuned."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.stats
import torch
import transformers

import statlab
from statlab import data
from statlab.evaluate import heads
from statlab.inputs import model_inputs
from statlab.models.loading import load_model, minilm_path

needs_data = pytest.mark.skipif(data.data_dir() is None, reason="needs STATLAB_DATA_DIR (../shared/data)")


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(minilm_path())


def tiny_config(cls, vocab=30522, **extra):
    """A 2-layer, 32-wide config of ``cls`` with the bundled tokenizer's vocabulary."""
    if cls is transformers.DistilBertConfig:
        return cls(vocab_size=vocab, dim=32, n_layers=2, n_heads=4, hidden_dim=64, dropout=0.0,
                   attention_dropout=0.0, seq_classif_dropout=0.0, qa_dropout=0.0, **extra)
    if cls is transformers.LlamaConfig:
        return cls(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, **extra)
    return cls(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **extra)


def saved(tmp_path, model, tokenizer, name="model"):
    path = tmp_path / name
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def sentiment_classifier(seed=0, labels=("negative", "positive")):
    torch.manual_seed(seed)
    config = tiny_config(transformers.BertConfig, num_labels=len(labels), id2label=dict(enumerate(labels)),
                         label2id={n: i for i, n in enumerate(labels)})
    return transformers.BertForSequenceClassification(config).eval()


CASES = [
    (transformers.BertForSequenceClassification, transformers.BertConfig, "classifier"),
    (transformers.DistilBertForSequenceClassification, transformers.DistilBertConfig, "classifier"),
    (transformers.BertForQuestionAnswering, transformers.BertConfig, "qa_outputs"),
    (transformers.DistilBertForQuestionAnswering, transformers.DistilBertConfig, "qa_outputs"),
    (transformers.LlamaForSequenceClassification, transformers.LlamaConfig, "score"),
]


@pytest.mark.parametrize("cls, config_cls, head", CASES, ids=[c[0].__name__ for c in CASES])
def test_task_model_loads_with_head_prunes_below_it_and_reloads(tmp_path, tokenizer, cls, config_cls, head):
    torch.manual_seed(0)
    model = cls(tiny_config(config_cls, num_labels=2)).eval()
    path = saved(tmp_path, model, tokenizer)
    loaded, _ = load_model(str(path), quiet=True)
    assert type(loaded) is cls
    head_before = {k: v.clone() for k, v in loaded.get_submodule(head).state_dict().items()}
    texts = [("a cat sat on the mat", "the cat is sitting"), ("rain fell all day", "it was sunny")] * 4
    batches = data.tokenize_batches(tokenizer, texts, max_length=32, batch_size=4)
    plan = statlab.prune(loaded, batches, mac_fraction=0.5, base=loaded.name_or_path)
    for name, value in loaded.get_submodule(head).state_dict().items():
        assert torch.equal(value, head_before[name]), f"the head's {name} changed"
    assert plan.kept_fraction()["neurons"] < 1
    plan.save(tmp_path / "plan")
    reloaded, _, _ = statlab.load_pruned(tmp_path / "plan")
    assert type(reloaded) is cls
    inputs = model_inputs(loaded, batches[0])  # DistilBERT takes no token types
    with torch.no_grad():
        ours, theirs = loaded(**inputs), reloaded(**inputs)
    for key in ("logits", "start_logits", "end_logits"):
        if key in ours:
            assert torch.equal(ours[key], theirs[key])


def test_bare_checkpoints_keep_their_routes(tmp_path, tokenizer):
    torch.manual_seed(0)
    bert = transformers.BertModel(tiny_config(transformers.BertConfig), add_pooling_layer=False)
    llama = transformers.LlamaForCausalLM(tiny_config(transformers.LlamaConfig))
    assert type(load_model(str(saved(tmp_path, bert, tokenizer, "bert")), quiet=True)[0]) is transformers.BertModel
    assert type(load_model(str(saved(tmp_path, llama, tokenizer, "llama")), quiet=True)[0]) is \
        transformers.LlamaForCausalLM


def test_label_map_by_name_in_any_order_generic_or_refused():
    config = transformers.BertConfig(num_labels=2, id2label={0: "POSITIVE", 1: "Negative"})
    order, how = heads.label_map(config, "sst2")
    assert list(order) == [1, 0] and how == "names"  # dataset class 0 (negative) is the model's class 1
    order, how = heads.label_map(transformers.BertConfig(num_labels=2), "mrpc")  # LABEL_0, LABEL_1
    assert list(order) == [0, 1] and how == "generic"
    order, _ = heads.label_map(transformers.BertConfig(num_labels=2, id2label={0: "not paraphrase",
                                                                               1: "paraphrase"}), "mrpc")
    assert list(order) == [0, 1]
    with pytest.raises(heads.LabelMismatchError, match="do not match"):
        heads.label_map(transformers.BertConfig(num_labels=2, id2label={0: "spam", 1: "ham"}), "sst2")
    with pytest.raises(heads.LabelMismatchError, match="3 classes"):
        heads.label_map(transformers.BertConfig(num_labels=3), "sst2")
    with pytest.raises(heads.LabelMismatchError, match="do not match"):
        heads.label_map(transformers.BertConfig(num_labels=2, id2label={0: "negative", 1: "negative"}), "sst2")


def test_glue_scores_by_hand():
    predicted, gold = np.array([1, 0, 1, 1]), np.array([1, 0, 0, 1])
    # tp = 2, tn = 1, fp = 1, fn = 0
    assert heads.glue_scores(predicted, gold, "sst2") == {"accuracy": 0.75, "n": 4}
    mrpc = heads.glue_scores(predicted, gold, "mrpc")
    assert mrpc["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 0)) and mrpc["accuracy"] == 0.75
    cola = heads.glue_scores(predicted, gold, "cola")
    assert cola["matthews"] == pytest.approx((2 * 1 - 1 * 0) / np.sqrt(3 * 2 * 2 * 1))
    scores, truth = np.array([0.1, 0.4, 0.35, 0.8]), np.array([0.0, 1.0, 2.0, 3.0])
    stsb = heads.glue_scores(scores, truth, "stsb")
    assert stsb["spearman"] == pytest.approx(0.8)  # ranks 1 3 2 4 vs 1 2 3 4: 1 - 6*2/(4*15)
    centred_x, centred_y = scores - scores.mean(), truth - truth.mean()
    assert stsb["pearson"] == pytest.approx(centred_x @ centred_y / np.linalg.norm(centred_x) / np.linalg.norm(centred_y))


def direct_predictions(model, tokenizer, texts):
    """Dataset-order predictions, one example at a time (no batching, no padding)."""
    out = []
    with torch.no_grad():
        for text in texts:
            out.append(model(**tokenizer(*text, truncation=True, max_length=128, return_tensors="pt")).logits[0])
    return torch.stack(out)


@needs_data
def test_head_metrics_match_a_direct_computation(tokenizer):
    model = sentiment_classifier()
    result = heads.head_metrics(model, tokenizer, "sst2", limit=30, disable_progress=True)
    rows = data.load_task("sst2", "validation").select((np.arange(30) * 872) // 30)
    logits = direct_predictions(model, tokenizer, data.task_texts(rows, "sst2"))
    gold = np.asarray(rows["label"][:])
    assert result["n"] == 30 and result["scored_by"] == "head" and result["label_map"] == "names"
    assert result["accuracy"] == pytest.approx(np.mean(logits.argmax(-1).numpy() == gold))
    swapped = sentiment_classifier(labels=("positive", "negative"))  # same weights, classes named the other way
    flipped = heads.head_metrics(swapped, tokenizer, "sst2", limit=30, disable_progress=True)
    assert flipped["accuracy"] == pytest.approx(np.mean(logits.argmax(-1).numpy() == 1 - gold))


@needs_data
def test_head_metrics_regression_and_pairs(tokenizer):
    torch.manual_seed(1)
    regressor = transformers.BertForSequenceClassification(
        tiny_config(transformers.BertConfig, num_labels=1, problem_type="regression")).eval()
    result = heads.head_metrics(regressor, tokenizer, "stsb", limit=40, disable_progress=True)
    rows = data.load_task("stsb", "validation").select((np.arange(40) * 1500) // 40)
    scores = direct_predictions(regressor, tokenizer, data.task_texts(rows, "stsb"))[:, 0].numpy()
    assert result["label_map"] == "regression"
    assert result["spearman"] == pytest.approx(scipy.stats.spearmanr(scores, rows["label"][:])[0], abs=1e-6)
    with pytest.raises(heads.LabelMismatchError, match="regression head"):
        heads.head_metrics(sentiment_classifier(), tokenizer, "stsb", limit=4)
    with pytest.raises(ValueError, match="no sequence-classification head"):
        heads.head_metrics(transformers.BertModel(tiny_config(transformers.BertConfig)), tokenizer, "sst2")


@needs_data
def test_task_calibration_examples_are_pairs_from_train_never_dev(tokenizer):
    examples = data.task_calibration_examples("mrpc", 64, seed=3)
    assert len(examples) == 64 == len(set(examples)) and all(len(e) == 2 for e in examples)
    assert examples == data.task_calibration_examples("mrpc", 64, seed=3)
    dev = {t for e in data.task_texts(data.load_task("mrpc", "validation"), "mrpc") for t in e}
    assert not dev.intersection(t for e in examples for t in e)
    batch = data.tokenize_batches(tokenizer, examples[:4], max_length=64, batch_size=4)[0]
    assert batch["token_type_ids"].max() == 1  # both members of each pair in one sequence
    assert len(data.task_calibration_examples("sst2", 5)[0]) == 1
    with pytest.raises(ValueError, match="usable examples"):
        data.task_calibration_examples("mrpc", 10**6)


@needs_data
def test_held_out_examples_miss_every_calibration_draw_and_dev(tokenizer):
    held = data.held_out_examples("mrpc", 300, calibration_sizes=(64, 256), seed=3)
    assert len(held.texts) == 300 == len(set(held.texts)) == len(held.labels)
    assert held.labels.dtype == np.int64 and set(held.labels.tolist()) <= {0, 1}
    calibration = set(data.task_calibration_examples("mrpc", 64, seed=3))
    calibration |= set(data.task_calibration_examples("mrpc", 256, seed=3))
    assert not calibration.intersection(held.texts)
    dev = {t for e in data.task_texts(data.load_task("mrpc", "validation"), "mrpc") for t in e}
    assert not dev.intersection(t for e in held.texts for t in e)
    # each text keeps its own gold label (looked up in the training split directly)
    train = data.load_task("mrpc", "train")
    gold = {tuple(t.strip() for t in e): y for e, y in zip(data.task_texts(train, "mrpc"), train["label"][:])}
    assert [gold[e] for e in held.texts] == held.labels.tolist()
    again = data.held_out_examples("mrpc", 300, calibration_sizes=(64, 256), seed=3)
    assert again.texts == held.texts
    with pytest.raises(ValueError, match="outside the calibration draws"):
        data.held_out_examples("mrpc", 10**6)


def test_head_logits_follow_the_order_of_the_texts(tokenizer):
    model = sentiment_classifier()
    texts = [("a fine film",), ("bad",), ("an entirely forgettable, long and tedious evening",)]
    logits = heads.head_logits(model, tokenizer, texts, batch_size=2, disable_progress=True)
    one = [heads.head_logits(model, tokenizer, [t], disable_progress=True)[0] for t in texts]
    assert logits.shape == (3, model.config.num_labels) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, torch.stack(one), rtol=1e-5, atol=1e-5)


@needs_data
def test_finetune_writes_a_task_model_that_loads_scores_and_is_reproducible(tmp_path, tokenizer):
    from statlab.finetune import FINETUNE_FILE, finetune, read_record

    torch.manual_seed(0)
    base = saved(tmp_path, transformers.BertModel(tiny_config(transformers.BertConfig)), tokenizer, "base")
    first = finetune(str(base), "mrpc", tmp_path / "ft", steps=3, seed=5, batch_size=4, disable_progress=True)
    record = read_record(tmp_path / "ft")
    assert record["settings"]["steps"] == 3 and record["dev"]["n"] == 408 and first.dev["scored_by"] == "head"
    model, _ = load_model(str(tmp_path / "ft"), quiet=True)
    assert type(model) is transformers.BertForSequenceClassification
    assert model.config.id2label == {0: "not_equivalent", 1: "equivalent"}
    again = finetune(str(base), "mrpc", tmp_path / "ft", steps=3, seed=5, batch_size=4, disable_progress=True)
    assert again.dev == first.dev  # same seed: the same model, replacing the earlier fine-tune
    reloaded, _ = load_model(str(tmp_path / "ft"), quiet=True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".statlab-tmp-")]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="will not write into it"):
        finetune(str(base), "mrpc", other, steps=1)
    assert (other / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="GLUE tasks"):
        finetune(str(base), "wikitext2", tmp_path / "x", steps=1)
    with pytest.raises(ValueError, match="steps must be an integer"):
        finetune(str(base), "sst2", tmp_path / "x", steps=-1)
    assert json.loads((tmp_path / "ft" / FINETUNE_FILE).read_text())["train_examples"] == 3668


@needs_data
def test_task_calibration_batches_carry_the_gold_labels(tokenizer):
    batches = data.task_calibration_batches(tokenizer, "mrpc", 20, seed=2, labels=True, batch_size=8)
    train = data.load_task("mrpc", "train")
    gold = dict(zip(data.task_texts(train, "mrpc"), train["label"][:]))
    decoded = [tuple(t.strip() for t in tokenizer.decode(ids, skip_special_tokens=False).split("[SEP]")[:2])
               for batch in batches for ids in batch["input_ids"]]
    labels = torch.cat([b["labels"] for b in batches]).tolist()
    assert sum(len(b["labels"]) for b in batches) == 20 and [len(b["labels"]) for b in batches] == [8, 8, 4]
    by_text = {tuple(tokenizer.decode(tokenizer(t)["input_ids"][1:-1]) for t in example): label
               for example, label in gold.items()}
    matched = [by_text.get((a.replace("[CLS]", "").strip(), b.strip())) for a, b in decoded]
    assert matched == labels  # each example's label travels with it through the length sort
    unlabeled = data.task_calibration_batches(tokenizer, "mrpc", 20, seed=2, batch_size=8)
    assert "labels" not in unlabeled[0] and torch.equal(unlabeled[0]["input_ids"], batches[0]["input_ids"])


@needs_data
def test_cli_prunes_evaluates_and_compares_a_task_model_by_its_head(tmp_path, tokenizer, capsys):
    from statlab import cli

    path = saved(tmp_path, sentiment_classifier(), tokenizer, "classifier")
    out = tmp_path / "plan"
    assert cli.main(["prune", "--model", str(path), "--task", "sst2", "--mac-fraction", "0.5",
                     "--calibration-size", "32", "--out", str(out), "--json"]) == 0
    pruned = json.loads(capsys.readouterr().out)
    assert pruned["calibration"]["source"] == "sst2 train examples" and pruned["calibration"]["examples"] == 32
    assert not list(out.glob("probe-*"))  # a task model needs no probe
    assert cli.main(["eval", str(out), "--task", "sst2", "--limit", "40", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["scored_by"] == "head" and result["metrics"]["n"] == 40
    model, _, _ = statlab.load_pruned(out)
    assert result["metrics"]["accuracy"] == heads.head_metrics(model, tokenizer, "sst2", limit=40)["accuracy"]
    assert cli.main(["eval", str(path), "--task", "mrpc", "--limit", "8"]) == 2  # an SST-2 model's labels
    assert "do not match" in capsys.readouterr().err
    assert cli.main(["compare", "--model", str(path), "--task", "sst2", "--methods", "stat,random",
                     "--budgets", "0.6", "--calibration-size", "16", "--limit", "16", "--json"]) == 0
    compared = json.loads(capsys.readouterr().out)
    assert compared["scored_by"] == "head" and len(compared["results"]) == 2
    assert compared["dense"]["metrics"]["scored_by"] == "head"


def test_bare_encoder_on_a_head_only_task_is_refused():
    from statlab.evaluate import check_task

    with pytest.raises(ValueError, match="fine-tuned task model's own head"):
        check_task(transformers.BertModel(tiny_config(transformers.BertConfig)), "qnli", "tiny")
    with pytest.raises(ValueError, match="own head on a GLUE task"):
        check_task(sentiment_classifier(), "wikitext2", "tiny")


@needs_data
def test_cli_finetune_writes_a_model_and_refuses_a_foreign_out(tmp_path, tokenizer, capsys):
    from statlab import cli

    torch.manual_seed(0)
    base = saved(tmp_path, transformers.BertModel(tiny_config(transformers.BertConfig)), tokenizer, "base")
    out = tmp_path / "ft"
    assert cli.main(["finetune", "--model", str(base), "--task", "mrpc", "--steps", "2", "--batch-size", "4",
                     "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["steps"] == 2 and result["dev"]["n"] == 408 and (out / "config.json").is_file()
    (tmp_path / "file").write_text("keep")
    assert cli.main(["finetune", "--model", str(base), "--task", "mrpc", "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err and (tmp_path / "file").read_text() == "keep"
    assert cli.main(["finetune", "--model", str(base), "--task", "mrpc", "--out", str(out), "--steps", "0"]) == 2


def test_cli_prunes_and_evaluates_a_question_answering_model_on_squad(tmp_path, tokenizer, capsys, monkeypatch):
    from statlab import cli

    from .test_squad import QUESTIONS, _squad_json

    root = tmp_path / "data"
    (root / "squad").mkdir(parents=True)
    (root / "squad" / "train-v1.1.json").write_text(json.dumps(_squad_json(QUESTIONS * 3)))
    (root / "squad" / "dev-v1.1.json").write_text(json.dumps(_squad_json(QUESTIONS)))
    monkeypatch.setenv(data.DATA_DIR_ENV, str(root))
    torch.manual_seed(0)
    path = saved(tmp_path, transformers.BertForQuestionAnswering(tiny_config(transformers.BertConfig)), tokenizer)
    out = tmp_path / "plan"
    assert cli.main(["prune", "--model", str(path), "--task", "squad", "--mac-fraction", "0.6",
                     "--calibration-size", "6", "--out", str(out), "--json"]) == 0
    pruned = json.loads(capsys.readouterr().out)
    assert pruned["calibration"]["source"] == "squad train questions" and pruned["calibration"]["examples"] == 6
    assert cli.main(["eval", str(out), "--task", "squad", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["scored_by"] == "head" and result["metrics"]["examples"] == 3 and result["seq_len"] == 384
    assert 0 <= result["metrics"]["f1"] <= 100
    assert cli.main(["eval", str(out), "--task", "sst2"]) == 2
    assert "question-answering model" in capsys.readouterr().err


def test_every_glue_task_that_calibrates_has_its_head_metric_and_a_dataset():
    from statlab.calibration import GLUE_TASKS

    assert set(GLUE_TASKS) == set(heads.HEAD_METRICS)
    assert set(GLUE_TASKS) <= set(data._TEXT_COLUMNS)  # each reads its texts (pairs as pairs)
    assert set(GLUE_TASKS) - {"stsb"} == set(data._LABEL_NAMES)  # each classifier maps its labels; STS-B regresses
