"""Zero-shot tasks through lm-eval on an in-memory model: a tiny local multiple-choice task, scored by hand.

Everything is offline: the task is a YAML over a JSONL file the test writes, the
tokenizer a word-level one over the task's own words, the model a tiny random
Llama.
"""

from __future__ import annotations

import json
import math
import random
import re
import sys

import numpy as np
import pytest
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from statlab.evaluate.lmeval import MISSING_EXTRA, parse_lm_eval_task, zero_shot
from tests.test_llama import tiny_llama

TASK = "statlab_tiny_choice"
DOCS = [
    {"question": "the sky is", "choices": ["blue", "green grass", "a loud red car"], "label": 0},
    {"question": "fire is", "choices": ["cold ice", "hot"], "label": 1},
    {"question": "a cat says", "choices": ["moo", "meow", "the red car says"], "label": 1},
    {"question": "snow is", "choices": ["white", "hot fire", "blue sky"], "label": 0},
    {"question": "grass is", "choices": ["red", "loud", "green"], "label": 2},
    {"question": "a dog says", "choices": ["woof", "meow meow", "moo"], "label": 0},
]
YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
test_split: test
output_type: multiple_choice
doc_to_text: question
doc_to_choice: choices
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def word_tokenizer(texts):
    """A fast word-level tokenizer over the words of ``texts`` that starts every sequence with ``<s>``, as Llama's."""
    words = sorted({w for text in texts for w in re.findall(r"\w+|[^\w\s]+", text)})
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>")


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer([d["question"] for d in DOCS] + [c for d in DOCS for c in d["choices"]])


@pytest.fixture(scope="module")
def model(tokenizer):
    assert len(tokenizer) <= 96  # tiny_llama's vocabulary
    return tiny_llama(seed=3)


@pytest.fixture
def task_dir(tmp_path):
    data = tmp_path / "tiny.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / f"{TASK}.yaml").write_text(YAML.format(task=TASK, data=data, cache=tmp_path / "hf-datasets"))
    return tasks


def choice_loglikelihoods(model, tokenizer, doc) -> np.ndarray:
    """``ll_j = sum_t log p(token_t | context, earlier tokens of " " + choice_j)``, one forward pass per choice."""
    n_context = len(tokenizer(doc["question"])["input_ids"])
    lls = []
    for choice in doc["choices"]:
        ids = torch.tensor([tokenizer(doc["question"] + " " + choice)["input_ids"]])  # (1, T)
        with torch.no_grad():
            logp = model(input_ids=ids).logits.double().log_softmax(-1)[0]  # (T, V)
        lls.append(sum(logp[t - 1, ids[0, t]].item() for t in range(n_context, ids.shape[1])))
    return np.array(lls)


def by_hand(model, tokenizer, docs) -> dict:
    """acc and acc_norm (log-likelihood per character of the choice) as lm-eval defines them."""
    acc, acc_norm = [], []
    for doc in docs:
        lls = choice_loglikelihoods(model, tokenizer, doc)
        lengths = np.array([len(c) for c in doc["choices"]], dtype=float)
        acc.append(float(np.argmax(lls) == doc["label"]))
        acc_norm.append(float(np.argmax(lls / lengths) == doc["label"]))
    return {"acc": float(np.mean(acc)), "acc_norm": float(np.mean(acc_norm)),
            "acc_stderr": float(np.std(acc, ddof=1) / math.sqrt(len(acc))),
            "acc_norm_stderr": float(np.std(acc_norm, ddof=1) / math.sqrt(len(acc_norm)))}


def test_accuracy_matches_a_computation_by_hand(model, tokenizer, task_dir):
    mode = model.training
    model.train()  # lm-eval switches to eval mode; zero_shot must hand the model back as it got it
    states = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    result = zero_shot(model, tokenizer, [TASK], task_dir=task_dir, batch_size=4)
    assert model.training
    model.train(mode)
    assert random.getstate() == states[0] and (np.random.get_state()[1] == states[1]).all()
    assert torch.equal(torch.get_rng_state(), states[2])
    assert tokenizer.pad_token is None  # lm-eval set the pad token of a copy

    import lm_eval

    assert result["lm_eval_version"] == lm_eval.__version__ == "0.4.13"
    metrics = result["tasks"][TASK]
    expected = by_hand(model, tokenizer, DOCS)
    assert 0 < expected["acc"] < 1 and expected["acc"] != expected["acc_norm"]  # the check can tell them apart
    assert metrics["n"] == len(DOCS)
    assert metrics["acc"] == expected["acc"] and metrics["acc_norm"] == expected["acc_norm"]
    assert metrics["acc_stderr"] == pytest.approx(expected["acc_stderr"], rel=1e-12)
    assert metrics["acc_norm_stderr"] == pytest.approx(expected["acc_norm_stderr"], rel=1e-12)
    assert json.loads(json.dumps(result)) == result

    limited = zero_shot(model, tokenizer, [TASK], task_dir=task_dir, limit=4, seed=1)["tasks"][TASK]
    assert limited["n"] == 4 and limited["acc"] == by_hand(model, tokenizer, DOCS[:4])["acc"]


def test_missing_extra_says_how_to_install(model, tokenizer, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` now raises ModuleNotFoundError
    with pytest.raises(ModuleNotFoundError, match=re.escape(MISSING_EXTRA)):
        zero_shot(model, tokenizer, ["piqa"])
    assert MISSING_EXTRA == "zero-shot tasks need the lmeval extra: pip install 'statlab-prune[lmeval]'"


def test_unknown_task_lists_close_names(model, tokenizer, task_dir):
    with pytest.raises(ValueError, match=r"unknown lm-eval task 'arc_easyy'.*close ones: arc_easy"):
        zero_shot(model, tokenizer, [TASK, "arc_easyy"], task_dir=task_dir)


def test_encoders_and_bare_decoders_are_refused(tokenizer):
    config = transformers.BertConfig(vocab_size=96, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32)
    with pytest.raises(ValueError, match=r"causal language model.*BertModel \(bert\)"):
        zero_shot(transformers.BertModel(config), tokenizer, [TASK])
    bare = transformers.LlamaModel(tiny_llama().config)
    with pytest.raises(ValueError, match=r"LlamaModel \(llama\)"):
        zero_shot(bare, tokenizer, [TASK])


@pytest.mark.parametrize("kwargs", [{"limit": 0}, {"batch_size": 0}, {"num_fewshot": -1}, {"limit": 0.5}])
def test_bad_counts_are_refused(model, tokenizer, kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        zero_shot(model, tokenizer, [TASK], **kwargs)


def test_a_string_of_tasks_is_refused(model, tokenizer):
    with pytest.raises(TypeError, match=r"\['piqa'\]"):
        zero_shot(model, tokenizer, "piqa")


def test_parse_lm_eval_task():
    assert parse_lm_eval_task("lm-eval:piqa,arc_easy") == ["piqa", "arc_easy"]
    assert parse_lm_eval_task("lm-eval: piqa") == ["piqa"]
    for text, message in [("lm-eval:", "names no task"), ("lm-eval:piqa,,arc_easy", "empty task name"),
                          ("lm-eval:piqa,", "empty task name"), ("lm-eval:piqa,arc_easy,piqa", "piqa more than once"),
                          ("piqa", "not an lm-eval task list")]:
        with pytest.raises(ValueError, match=message):
            parse_lm_eval_task(text)


def test_cli_eval_runs_lm_eval_tasks_on_a_saved_model(tmp_path, model, tokenizer, task_dir, capsys):
    from statlab import cli

    path = tmp_path / "tiny-llama"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    assert cli.main(["eval", str(path), "--task", f"lm-eval:{TASK}", "--task-dir", str(task_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["scored_by"] == "lm-eval" and result["seq_len"] == 512
    assert result["metrics"]["tasks"][TASK]["acc"] == pytest.approx(by_hand(model, tokenizer, DOCS)["acc"])
    assert cli.main(["eval", str(path), "--task", "lm-eval:a,,b"]) == 2
    assert "empty task name" in capsys.readouterr().err
    assert cli.main(["eval", "minilm", "--task", f"lm-eval:{TASK}"]) == 2
    assert "causal language model" in capsys.readouterr().err
