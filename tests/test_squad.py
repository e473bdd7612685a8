"""SQuAD evaluation: official scores on hand-computed cases, local JSON loading, span post-processing
on hand-made logits, and end-to-end runs of tiny BERT / DistilBERT QA models (no hub, no weights)."""

from __future__ import annotations

import json
import re
import types

import numpy as np
import pytest
import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForQuestionAnswering,
    BertModel,
    DistilBertConfig,
    DistilBertForQuestionAnswering,
)

from statlab.evaluate import squad
from statlab.models.loading import minilm_path

# --------------------------------------------------------------------------- scores


@pytest.mark.parametrize(
    "text, normalised",
    [
        ("The  Cat's hat!", "cats hat"),  # lower, "'" and "!" go, "the" goes, spaces collapse
        ("An apple, a day.", "apple day"),
        ("theatre", "theatre"),  # an article only as a whole word
        ("  ", ""),
    ],
)
def test_normalize_answer(text, normalised):
    assert squad.normalize_answer(text) == normalised


def test_exact_match_after_normalisation():
    assert squad.exact_match("the Cat sat.", "cat  sat") == 1.0
    assert squad.exact_match("cat sat", "cat sat down") == 0.0


def test_token_f1_by_hand():
    # "the cat sat" -> [cat, sat]; "a cat sat down" -> [cat, sat, down]; 2 shared: P = 2/2, R = 2/3
    p, r = 2 / 2, 2 / 3
    assert squad.token_f1("the cat sat", "a cat sat down") == pytest.approx(2 * p * r / (p + r))  # 0.8
    # shared tokens count with multiplicity: [cat, cat, cat] vs [cat] share 1: P = 1/3, R = 1/1
    p, r = 1 / 3, 1 / 1
    assert squad.token_f1("cat cat cat", "cat") == pytest.approx(2 * p * r / (p + r))  # 0.5
    assert squad.token_f1("dog", "cat") == 0.0


def test_empty_answers_v1_and_v2():
    # v1 (official v1.1 script): no shared token -> F1 0, even when both are empty
    assert squad.token_f1("", "the") == 0.0
    # v2: an empty side scores as exact match does
    assert squad.token_f1("", "the", version_2=True) == 1.0
    assert squad.token_f1("", "cat", version_2=True) == 0.0
    assert squad.token_f1("cat", "", version_2=True) == 0.0


def test_question_scores_best_over_golds():
    # "cat sat" vs "dog sat": 1 shared, P = R = 1/2 -> 0.5; vs "the cat sat down": P = 1, R = 2/3 -> 0.8
    scores = squad.question_scores("cat sat", ["dog sat", "the cat sat down"])
    assert scores == {"exact_match": 0.0, "f1": pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))}
    assert squad.question_scores("cat sat", ["dog", "Cat sat."]) == {"exact_match": 1.0, "f1": 1.0}


def test_question_scores_v2_unanswerable():
    assert squad.question_scores("", [], version_2=True) == {"exact_match": 1.0, "f1": 1.0}
    assert squad.question_scores("a cat", [], version_2=True) == {"exact_match": 0.0, "f1": 0.0}
    assert squad.question_scores("", ["the"], version_2=True)["exact_match"] == 1.0  # "the" normalises to ""
    with pytest.raises(ValueError, match="version_2=True"):
        squad.question_scores("", [])


def test_squad_scores_v2_breakdown():
    references = [
        {"id": "q1", "answers": ["cat sat"]},  # EM 1, F1 1
        {"id": "q2", "answers": ["cat sat down"]},  # EM 0, F1 0.8
        {"id": "q3", "answers": []},  # EM 1, F1 1
        {"id": "q4", "answers": []},  # EM 0, F1 0
    ]
    predictions = {"q1": "the cat sat", "q2": "cat sat", "q3": "", "q4": "dog", "extra": "ignored"}
    scores = squad.squad_scores(predictions, references, version_2=True)
    assert scores == pytest.approx({
        "exact_match": 100 * (1 + 0 + 1 + 0) / 4, "f1": 100 * (1 + 0.8 + 1 + 0) / 4, "examples": 4,
        "has_answer_exact_match": 100 * (1 + 0) / 2, "has_answer_f1": 100 * (1 + 0.8) / 2, "has_answer_examples": 2,
        "no_answer_exact_match": 100 * (1 + 0) / 2, "no_answer_f1": 100 * (1 + 0) / 2, "no_answer_examples": 2,
    })


def test_squad_scores_v1_and_errors():
    references = [{"id": "q1", "answers": ["cat sat"]}, {"id": "q2", "answers": ["dog", "cat sat down"]}]
    scores = squad.squad_scores({"q1": "cat sat", "q2": "cat sat"}, references)
    assert scores == pytest.approx({"exact_match": 50.0, "f1": 100 * (1 + 0.8) / 2, "examples": 2})
    with pytest.raises(ValueError, match="no prediction.*q2"):
        squad.squad_scores({"q1": "cat"}, references)
    with pytest.raises(ValueError, match="no references"):
        squad.squad_scores({}, [])


# --------------------------------------------------------------------------- loading

QUESTIONS = [
    ("Where does the tower stand?", "The tower stands in Paris, France and draws many visitors.", "Paris, France"),
    ("How long did the festival last?", "The festival lasted seven long days before the rain came.", "seven long days"),
    (
        "What did she buy?",
        "Early on a cold Saturday morning before most of the stalls had even opened their doors to the "
        "crowds she bought green and red apples at the market.",
        "green and red apples",
    ),
]


def _squad_json(questions, impossible=()):
    """The official layout: one article, one paragraph per question; ids q0, q1, ...; ``impossible``: v2 ones."""
    paragraphs = []
    for i, (question, context, answer) in enumerate(questions):
        qa = {"id": f"q{i}", "question": question, "answers": [{"text": answer, "answer_start": context.find(answer)}]}
        if i in impossible:
            qa.update(answers=[], is_impossible=True, plausible_answers=qa["answers"])
        paragraphs.append({"context": context, "qas": [qa]})
    return {"version": "1.1", "data": [{"title": "Tiny", "paragraphs": paragraphs}]}


def _write(tmp_path, document, name="dev.json"):
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else json.dumps(document), encoding="utf-8")
    return path


def test_load_squad_local_file(tmp_path):
    rows = squad.load_squad(path=_write(tmp_path, _squad_json(QUESTIONS)))
    assert rows.column_names == ["id", "title", "context", "question", "answers"]
    assert rows.features == squad.SQUAD_FEATURES
    assert rows["id"][:] == ["q0", "q1", "q2"]
    assert rows[1]["answers"] == {"text": ["seven long days"], "answer_start": [20]}
    assert rows[1]["context"][20:35] == "seven long days"


def test_load_squad_v2_unanswerable(tmp_path):
    path = _write(tmp_path, _squad_json(QUESTIONS, impossible={2}))
    rows = squad.load_squad(path=path, version_2=True)
    assert rows[2]["answers"] == {"text": [], "answer_start": []}
    with pytest.raises(ValueError, match=r"have no answers.*'q2'.*version_2=True"):
        squad.load_squad(path=path)


def test_load_squad_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        squad.load_squad(path=tmp_path / "missing.json")
    with pytest.raises(ValueError, match=r"bad\.json is not JSON"):
        squad.load_squad(path=_write(tmp_path, "{not json", "bad.json"))
    with pytest.raises(ValueError, match=r"the top level has no list field 'data'"):
        squad.load_squad(path=_write(tmp_path, {"paragraphs": []}))
    with pytest.raises(ValueError, match=r"data\[0\]\.paragraphs\[0\] has no str field 'context'"):
        squad.load_squad(path=_write(tmp_path, {"data": [{"paragraphs": [{"qas": []}]}]}))
    document = _squad_json(QUESTIONS)
    document["data"][0]["paragraphs"][1]["qas"][0]["answers"][0]["answer_start"] = "20"
    with pytest.raises(ValueError, match=r"paragraphs\[1\]\.qas\[0\]\.answers\[0\] has no int field 'answer_start'"):
        squad.load_squad(path=_write(tmp_path, document))
    twice = _squad_json(QUESTIONS[:2])
    twice["data"][0]["paragraphs"][1]["qas"][0]["id"] = "q0"
    with pytest.raises(ValueError, match=r"unique, \['q0'\] repeat"):
        squad.load_squad(path=_write(tmp_path, twice))
    with pytest.raises(ValueError, match="holds no questions"):
        squad.load_squad(path=_write(tmp_path, {"data": []}))
    with pytest.raises(ValueError, match="unknown SQuAD split 'test'"):
        squad.load_squad("test", path=tmp_path / "missing.json")


# --------------------------------------------------------------------------- post-processing

COUNT = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen"


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(minilm_path())


@pytest.fixture(scope="module")
def count_windows(tokenizer):
    # 16 tokens = [CLS] count ? [SEP] + 11 context tokens + [SEP]; consecutive windows share 4 tokens
    return squad.squad_windows(tokenizer, ["count?"], [COUNT], max_length=16, stride=4)


def _logits(windows, context, *, start=None, end=None):
    """Zero logits (F, T) but for words of ``context``: ``{word: logit}``, set in every window holding it."""
    logits = squad.QALogits(start=np.zeros(windows.offsets.shape[:2], np.float32),
                            end=np.zeros(windows.offsets.shape[:2], np.float32))
    for target, words in ((logits.start, start or {}), (logits.end, end or {})):
        for word, value in words.items():
            char = re.search(rf"\b{word}\b", context).start()
            target[windows.offsets[..., 0] == char] = value
    return logits


def test_windows_overlap_by_stride(count_windows, tokenizer):
    words = [tokenizer.decode(ids[mask]).split() for ids, mask in
             zip(count_windows.inputs["input_ids"], torch.from_numpy(count_windows.in_context))]
    assert words[0] == COUNT.split()[0:11]
    assert words[1] == COUNT.split()[7:17]  # starts 4 tokens before window 0 ended
    assert count_windows.example.tolist() == [0, 0] and count_windows.cls.tolist() == [0, 0]
    assert words[0][-1] == "ten"  # "nine ... twelve" crosses the end of window 0


def test_window_span_by_hand():
    start = np.array([9.0, 0.0, 5.0, 1.0, 0.0])
    end = np.array([9.0, 0.0, 1.0, 4.0, 2.0])
    in_context = np.array([False, True, True, True, True])  # position 0 (say [CLS]) is never an answer
    # best pair: start 2 (5) + end 3 (4) = 9; with one token at most: s_i + e_i = 0, 6, 5, 2 -> position 2
    assert squad.window_span(start, end, in_context) == {"start": 2, "end": 3, "score": 9.0}
    assert squad.window_span(start, end, in_context, max_answer_length=1) == {"start": 2, "end": 2, "score": 6.0}
    # end before start only: start peaks at 3, end at 2; with n_best=1 no pair counts
    assert squad.window_span(np.array([0.0, 1, 2]), np.array([0.0, 2, 1]), np.ones(3, bool), n_best=1) is None


def test_span_across_the_stride_boundary_comes_from_the_window_holding_it(count_windows):
    # window 0 lacks "twelve": its best is "nine ten" = 5 + 1; window 1 holds "nine ... twelve" = 5 + 5
    logits = _logits(count_windows, COUNT, start={"nine": 5}, end={"ten": 1, "twelve": 5})
    assert squad.best_answers(count_windows, logits, [COUNT])[0].text == "nine ten eleven twelve"
    assert squad.best_answers(count_windows, logits, [COUNT])[0].score == 10.0


def test_too_long_span_rejected(count_windows):
    # "two ... six" is 5 tokens: 5 + 5 = 10 when allowed; with at most 3 tokens "two three" = 5 + 2 wins
    logits = _logits(count_windows, COUNT, start={"two": 5}, end={"three": 2, "six": 5})
    assert squad.best_answers(count_windows, logits, [COUNT], max_answer_length=5)[0].text == "two three four five six"
    assert squad.best_answers(count_windows, logits, [COUNT], max_answer_length=3)[0].text == "two three"


def test_question_and_special_tokens_rejected(count_windows):
    logits = _logits(count_windows, COUNT, start={"four": 1}, end={"five": 1})
    logits.start[:, :4] = 10.0  # [CLS] count ? [SEP]
    logits.end[:, :4] = 10.0
    answer = squad.best_answers(count_windows, logits, [COUNT])[0]
    assert answer.text == "four five" and answer.score == 2.0 and answer.null_score == 20.0


def test_null_answer_against_threshold():
    answer = squad.Answer(text="four five", score=2.0, null_score=3.0)  # null beats the span by 1
    assert squad.choose_text(answer) == "four five"  # v1 always answers
    assert squad.choose_text(answer, version_2=True) == ""
    assert squad.choose_text(answer, version_2=True, null_threshold=1.5) == "four five"


# --------------------------------------------------------------------------- end to end


def _tiny_bert(tokenizer):
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64)
    return BertForQuestionAnswering(config)


def _tiny_distilbert(tokenizer):
    config = DistilBertConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=2, hidden_dim=64)
    return DistilBertForQuestionAnswering(config)


FAMILIES = [pytest.param(_tiny_bert, id="bert"), pytest.param(_tiny_distilbert, id="distilbert")]


def _seeded(build, seed=0):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


def _force_head(model, tokenizer, starts, ends):
    """Logits that peak on known words: start 8 on ``starts``, end 8 on ``ends``, null 2·4√2 ≈ 11.3 at [CLS].

    Every embedding and every linear map but the head is zeroed, so each block
    is ``h = LayerNorm(h + 0)`` and a token's last hidden state is the
    LayerNorm of its word embedding: ``u = e_0 - e_1`` for start words
    normalises to ``4 u`` (variance 2/32), ``v = e_2 - e_3`` for end words to
    ``4 v``, ``u + v`` at [CLS] to ``2√2 (u + v)``, all others to 0. The head
    reads ``(u, v)``: start logit ``4 u·u = 8``, end logit 8, other tokens 0.
    """
    u, v = torch.zeros(model.config.hidden_size), torch.zeros(model.config.hidden_size)
    u[0], u[1], v[2], v[3] = 1.0, -1.0, 1.0, -1.0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)) and module is not model.qa_outputs:
                module.weight.zero_()
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
        embedding = model.get_input_embeddings().weight
        embedding[tokenizer.convert_tokens_to_ids(starts)] = u
        embedding[tokenizer.convert_tokens_to_ids(ends)] = v
        embedding[tokenizer.cls_token_id] = u + v
        model.qa_outputs.weight.copy_(torch.stack([u, v]))
        model.qa_outputs.bias.zero_()
    return model


OPTIONS = {"max_length": 24, "stride": 8, "batch_size": 2, "disable_progress": True}  # question 3 takes 3 windows


@pytest.mark.parametrize("build", FAMILIES)
def test_random_model_answers_with_context_substrings(build, tokenizer, tmp_path):
    rows = squad.load_squad(path=_write(tmp_path, _squad_json(QUESTIONS)))
    predictions = squad.squad_predictions(_seeded(lambda: build(tokenizer)), tokenizer, rows, **OPTIONS)
    assert list(predictions) == ["q0", "q1", "q2"]
    for row in rows:
        assert predictions[row["id"]] and predictions[row["id"]] in row["context"]


@pytest.fixture(scope="module", params=FAMILIES)
def forced(request, tokenizer):
    return _force_head(_seeded(lambda: request.param(tokenizer)), tokenizer, ["paris", "seven", "green"],
                       ["france", "days", "apples"])


def test_forced_head_scores_100(forced, tokenizer, tmp_path):
    forced.train()
    rows = squad.load_squad(path=_write(tmp_path, _squad_json(QUESTIONS)))
    metrics = squad.squad_metrics(forced, tokenizer, rows, **OPTIONS)
    assert metrics == {"exact_match": 100.0, "f1": 100.0, "examples": 3}
    assert forced.training  # eval mode only for the run
    assert squad.squad_metrics(forced, tokenizer, rows, limit=1, **OPTIONS)["examples"] == 1


def test_forced_head_v2_abstains_without_marked_words(forced, tokenizer, tmp_path):
    # no marked word in q2's context: its best span is 0 + 0, below the null score 11.3, so it abstains
    unanswerable = ("What did she buy?", "She bought nothing at the market today.", "nothing")
    rows = squad.load_squad(path=_write(tmp_path, _squad_json(QUESTIONS[:2] + [unanswerable], impossible={2})),
                            version_2=True)
    metrics = squad.squad_metrics(forced, tokenizer, rows, version_2=True, **OPTIONS)
    assert metrics == {"exact_match": 100.0, "f1": 100.0, "examples": 3, "has_answer_exact_match": 100.0,
                       "has_answer_f1": 100.0, "has_answer_examples": 2, "no_answer_exact_match": 100.0,
                       "no_answer_f1": 100.0, "no_answer_examples": 1}


def test_wrong_model_or_tokenizer(tokenizer, tmp_path):
    rows = squad.load_squad(path=_write(tmp_path, _squad_json(QUESTIONS[:1])))
    encoder = BertModel(BertConfig(vocab_size=100, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=8))
    with pytest.raises(TypeError, match="ForQuestionAnswering"):
        squad.squad_predictions(encoder, tokenizer, rows)
    with pytest.raises(TypeError, match="slow tokenizer"):
        squad.squad_windows(types.SimpleNamespace(is_fast=False), ["q?"], ["c"])
