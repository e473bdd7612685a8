"""SQuAD v1.1 / v2.0: extractive question answering scored by the model's own QA head.

The pipeline, one function per step:

1. :func:`load_squad` — the questions, from the hub (``rajpurkar/squad``,
   ``rajpurkar/squad_v2``) or from a local JSON file in the official format.
2. :func:`squad_windows` — question + context tokenised into overlapping
   windows of ``max_length`` tokens, consecutive windows of one context sharing
   ``stride`` tokens, so an answer cut by one window lies whole in the next.
3. :func:`qa_logits` — start and end logits of a ``*ForQuestionAnswering``
   model on every window.
4. :func:`best_answers` — the best span per question over all its windows:
   ``argmax s_i + e_j`` over the ``n_best`` top context tokens of each logit,
   ``i <= j < i + max_answer_length``; for v2, :func:`choose_text` answers
   nothing when the null score (``[CLS]`` start + end, least over the windows)
   beats the span by more than ``null_threshold``.
5. :func:`squad_scores` — exact match and token F1 of the official evaluation
   scripts, as percentages.

:func:`squad_predictions` runs steps 2–4, :func:`squad_metrics` all five.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
import string
from pathlib import Path

import datasets
import numpy as np
import torch
from tqdm import tqdm

from ._common import _eval_mode, _model_inputs, _spread_rows

SQUAD_HUB = {False: "rajpurkar/squad", True: "rajpurkar/squad_v2"}
SQUAD_SPLITS = ("train", "validation")
SQUAD_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "title": datasets.Value("string"),
        "context": datasets.Value("string"),
        "question": datasets.Value("string"),
        "answers": {
            "text": datasets.List(datasets.Value("string")),
            "answer_start": datasets.List(datasets.Value("int32")),
        },
    }
)

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_FORMAT = (
    'the official SQuAD format is {"data": [{"title": ..., "paragraphs": [{"context": ..., '
    '"qas": [{"id": ..., "question": ..., "answers": [{"text": ..., "answer_start": ...}]}]}]}]}'
)


# --------------------------------------------------------------------------- scores


def normalize_answer(text: str) -> str:
    """``text`` as the official SQuAD scripts compare it.

    Lower-cased, punctuation (``string.punctuation``) removed, the articles
    *a*, *an*, *the* removed, whitespace runs collapsed to one space and the
    ends stripped: ``"The  Cat's hat!"`` → ``"cats hat"``.
    """
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str, *, version_2: bool = False) -> float:
    """F1 of the normalised tokens: ``2 P R / (P + R)``.

    ``P = c / |pred|`` and ``R = c / |gold|``, with ``c`` the tokens the two
    share counted with multiplicity (``Counter`` intersection); 0 when they
    share none. With ``version_2`` an empty prediction or gold scores as exact
    match does: 1 when both are empty, 0 when one is.
    """
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if version_2 and not (pred and ref):
        return float(pred == ref)
    common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def question_scores(prediction: str, golds: list[str], *, version_2: bool = False) -> dict:
    """Exact match and F1 of one prediction: the best over the gold answers.

    For v2, golds that normalise to nothing are dropped, and a question left
    with none is unanswerable: its one gold is ``""``.

    Returns
    -------
    dict
        ``exact_match`` and ``f1`` in [0, 1].
    """
    if version_2:
        golds = [gold for gold in golds if normalize_answer(gold)] or [""]
    if not golds:
        raise ValueError("a SQuAD v1.1 question without gold answers; for SQuAD v2.0 pass version_2=True")
    return {
        "exact_match": max(exact_match(prediction, gold) for gold in golds),
        "f1": max(token_f1(prediction, gold, version_2=version_2) for gold in golds),
    }


def squad_scores(predictions: dict[str, str], references: list[dict], *, version_2: bool = False) -> dict:
    """Dataset exact match and F1 of the official SQuAD v1.1 / v2.0 evaluation.

    Parameters
    ----------
    predictions : dict of str -> str
        Predicted answer text per question id (``""``: no answer, for v2).
        Ids without a reference are ignored.
    references : list of dict
        ``{"id": str, "answers": list of str}`` per question; an empty list is
        an unanswerable (v2) question.
    version_2 : bool
        Score as SQuAD v2.0 (empty answers, HasAns / NoAns breakdown).

    Returns
    -------
    dict
        ``exact_match`` and ``f1`` (percent, 0–100, the mean over the
        questions) and ``examples``. For v2 also ``has_answer_examples`` and
        ``no_answer_examples`` and, for each group that has questions,
        ``has_answer_exact_match``, ``has_answer_f1``, ``no_answer_exact_match``,
        ``no_answer_f1``.

    Raises
    ------
    ValueError
        No references, or references without a prediction (they are named).
    """
    if not references:
        raise ValueError("no references to score: pass at least one question")
    missing = [ref["id"] for ref in references if ref["id"] not in predictions]
    if missing:
        raise ValueError(f"{len(missing)} question(s) have no prediction, e.g. {missing[:3]}")
    scores = [question_scores(predictions[ref["id"]], ref["answers"], version_2=version_2) for ref in references]
    result = {**_percentages(scores), "examples": len(scores)}
    if version_2:
        answered = [any(normalize_answer(gold) for gold in ref["answers"]) for ref in references]
        for name, keep in (("has_answer", True), ("no_answer", False)):
            group = [score for score, has in zip(scores, answered) if has == keep]
            result[f"{name}_examples"] = len(group)
            result.update({f"{name}_{key}": value for key, value in _percentages(group).items()})
    return result


def _percentages(scores: list[dict]) -> dict:
    """Mean ``exact_match`` and ``f1`` of ``scores`` in percent; empty for no scores."""
    if not scores:
        return {}
    return {key: 100.0 * float(np.mean([score[key] for score in scores])) for key in ("exact_match", "f1")}


# --------------------------------------------------------------------------- data


def load_squad(split: str = "validation", *, version_2: bool = False, path=None) -> datasets.Dataset:
    """SQuAD v1.1 or v2.0 questions, one row per question.

    Parameters
    ----------
    split : {"validation", "train"}
        ``"dev"`` is accepted for ``"validation"``. Read from the hub; a local
        file is one split already.
    version_2 : bool
        SQuAD v2.0 (``rajpurkar/squad_v2``): unanswerable questions have no
        answers.
    path : str or os.PathLike, optional
        A JSON file in the official format (``dev-v1.1.json``,
        ``dev-v2.0.json``), read instead of the hub. Default: the official
        file name under ``$STATLAB_DATA_DIR/squad/`` when it is there, else
        the hub.

    Returns
    -------
    datasets.Dataset
        Columns ``id``, ``title``, ``context``, ``question`` and ``answers``
        (``{"text": list of str, "answer_start": list of int}``), as on the hub
        (:data:`SQUAD_FEATURES`).

    Raises
    ------
    FileNotFoundError
        ``path`` is not a file.
    ValueError
        An unknown split, a file that is not JSON or not in the SQuAD format,
        duplicate ids, or a question without answers while ``version_2`` is
        False.
    """
    split = {"dev": "validation"}.get(split, split)
    if split not in SQUAD_SPLITS:
        raise ValueError(f"unknown SQuAD split {split!r}; valid splits: {', '.join(SQUAD_SPLITS)} ('dev' too)")
    if path is None:
        path = _offline_copy(split, version_2)
    if path is None:
        hub = datasets.load_dataset(SQUAD_HUB[version_2], split=split)
        hub = hub.select_columns(list(SQUAD_FEATURES))
        return hub if hub.features == SQUAD_FEATURES else hub.cast(SQUAD_FEATURES)
    columns = _squad_columns(_read_json(Path(path)), Path(path))
    _check_rows(columns, Path(path), version_2)
    return datasets.Dataset.from_dict(columns, features=SQUAD_FEATURES)


def _offline_copy(split: str, version_2: bool) -> Path | None:
    """``$STATLAB_DATA_DIR/squad/<official file name>`` when that file is there, else None (the hub)."""
    from statlab.data import data_dir

    root = data_dir()
    name = f"{'train' if split == 'train' else 'dev'}-v{'2.0' if version_2 else '1.1'}.json"
    return root / "squad" / name if root is not None and (root / "squad" / name).is_file() else None


def _read_json(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"SQuAD file {path} does not exist (pass the path of e.g. dev-v1.1.json)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"SQuAD file {path} is not JSON ({error}); {_FORMAT}") from error


def _field(node, key: str, kind: type, where: str, path: Path):
    """``node[key]``, checked to be a ``kind``; a ValueError naming the file and the place otherwise."""
    if not isinstance(node, dict) or not isinstance(node.get(key), kind):
        raise ValueError(f"SQuAD file {path}: {where} has no {kind.__name__} field {key!r}; {_FORMAT}")
    return node[key]


def _squad_columns(document, path: Path) -> dict[str, list]:
    """Columns of :data:`SQUAD_FEATURES` from the parsed official JSON, one row per question."""
    columns = {name: [] for name in SQUAD_FEATURES}
    for a, article in enumerate(_field(document, "data", list, "the top level", path)):
        title = article.get("title", "") if isinstance(article, dict) else ""
        for p, paragraph in enumerate(_field(article, "paragraphs", list, f"data[{a}]", path)):
            where = f"data[{a}].paragraphs[{p}]"
            context = _field(paragraph, "context", str, where, path)
            for q, qa in enumerate(_field(paragraph, "qas", list, where, path)):
                row = _question_row(qa, f"{where}.qas[{q}]", path)
                for name, value in {**row, "title": str(title), "context": context}.items():
                    columns[name].append(value)
    return columns


def _question_row(qa, where: str, path: Path) -> dict:
    """``id``, ``question`` and ``answers`` of one ``qas`` entry; unanswerable (v2) ones get no answers."""
    row = {"id": _field(qa, "id", str, where, path), "question": _field(qa, "question", str, where, path)}
    answers = [] if qa.get("is_impossible", False) else _field(qa, "answers", list, where, path)
    for i, answer in enumerate(answers):
        _field(answer, "text", str, f"{where}.answers[{i}]", path)
        _field(answer, "answer_start", int, f"{where}.answers[{i}]", path)
    row["answers"] = {"text": [a["text"] for a in answers], "answer_start": [a["answer_start"] for a in answers]}
    return row


def _check_rows(columns: dict[str, list], path: Path, version_2: bool) -> None:
    if not columns["id"]:
        raise ValueError(f"SQuAD file {path} holds no questions; {_FORMAT}")
    repeated = [key for key, count in collections.Counter(columns["id"]).items() if count > 1]
    if repeated:
        raise ValueError(f"SQuAD file {path}: question ids must be unique, {repeated[:3]} repeat")
    if not version_2:
        unanswered = [key for key, answers in zip(columns["id"], columns["answers"]) if not answers["text"]]
        if unanswered:
            raise ValueError(
                f"SQuAD file {path}: {len(unanswered)} question(s) have no answers (e.g. {unanswered[0]!r}), "
                f"as SQuAD v2.0 has; load it with version_2=True"
            )


# --------------------------------------------------------------------------- windows and logits


@dataclasses.dataclass(frozen=True, eq=False)
class Windows:
    """Question + context windows of ``N`` questions: ``F >= N`` rows of ``T`` tokens.

    Attributes
    ----------
    inputs : dict of str -> LongTensor, each of shape (F, T)
        ``input_ids``, ``attention_mask`` (and ``token_type_ids``) as the
        tokenizer made them.
    example : ndarray of int64, shape (F,)
        The question of each window, non-decreasing.
    offsets : ndarray of int64, shape (F, T, 2)
        ``context[offsets[f, t, 0]:offsets[f, t, 1]]`` is token ``t`` of window
        ``f``; -1 for tokens outside the context (question, special, padding).
    cls : ndarray of int64, shape (F,)
        Position of the ``[CLS]`` token, whose start + end logit is the null
        (no-answer) score.
    """

    inputs: dict
    example: np.ndarray
    offsets: np.ndarray
    cls: np.ndarray

    @property
    def in_context(self) -> np.ndarray:
        """Bool mask (F, T) of the context tokens, the only ones an answer can use."""
        return self.offsets[..., 0] >= 0


@dataclasses.dataclass(frozen=True, eq=False)
class QALogits:
    """Start and end logits, float32 ndarrays of shape (F, T), one row per window."""

    start: np.ndarray
    end: np.ndarray


def squad_windows(tokenizer, questions, contexts, *, max_length: int = 384, stride: int = 128) -> Windows:
    """Tokenise question + context pairs into overlapping windows (``truncation="only_second"``).

    A context longer than a window is cut into windows whose consecutive
    context parts share ``stride`` tokens; the question is repeated in each.
    Questions lose their leading whitespace (some SQuAD v2 questions start with
    many spaces, which would eat the window).

    Parameters
    ----------
    tokenizer : fast transformers tokenizer (offsets need one)
    questions, contexts : sequence of str, length N
    max_length, stride : int
        Tokens per window and context tokens shared by consecutive windows.

    Returns
    -------
    Windows
        ``F >= N`` windows padded to the longest, ``T <= max_length``.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"{type(tokenizer).__name__} is a slow tokenizer: SQuAD needs a fast one for its offset mapping; "
            f"load it with AutoTokenizer.from_pretrained(..., use_fast=True)"
        )
    encoded = tokenizer(
        [question.lstrip() for question in questions], list(contexts), truncation="only_second",
        max_length=max_length, stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True,
        padding="longest", return_tensors="np",
    )
    context = np.array([[s == 1 for s in encoded.sequence_ids(f)] for f in range(len(encoded["input_ids"]))])
    offsets = np.where(context[..., None], encoded.pop("offset_mapping"), -1).astype(np.int64)  # (F, T, 2)
    example = np.asarray(encoded.pop("overflow_to_sample_mapping"), dtype=np.int64)  # (F,)
    inputs = {key: torch.from_numpy(np.asarray(value, dtype=np.int64)) for key, value in encoded.items()}
    cls_id = tokenizer.cls_token_id
    cls = np.argmax(encoded["input_ids"] == cls_id, axis=1) if cls_id is not None else np.zeros(len(example))
    return Windows(inputs=inputs, example=example, offsets=offsets, cls=cls.astype(np.int64))


def qa_logits(model, windows: Windows, *, batch_size: int = 32, disable_progress: bool | None = None) -> QALogits:
    """Start and end logits of a ``*ForQuestionAnswering`` model on every window.

    Each batch drops the columns that are padding in all its rows, so short
    windows cost only their length; dropped positions get logit ``-inf``.

    Returns
    -------
    QALogits
        ``start`` and ``end``, float32 on the CPU, shape (F, T).
    """
    n_windows, length = windows.inputs["input_ids"].shape
    start = np.full((n_windows, length), -np.inf, dtype=np.float32)
    end = np.full((n_windows, length), -np.inf, dtype=np.float32)
    with _eval_mode(model), torch.inference_mode():
        for first in tqdm(range(0, n_windows, batch_size), desc="squad", unit="batch", disable=disable_progress):
            rows = slice(first, first + batch_size)
            keep = windows.inputs["attention_mask"][rows].bool().any(0).numpy()  # (T,)
            batch = {key: value[rows][:, keep] for key, value in windows.inputs.items()}  # (B, T_b)
            output = model(**_model_inputs(model, batch))
            start[rows, keep] = output.start_logits.float().cpu().numpy()  # (B, T_b)
            end[rows, keep] = output.end_logits.float().cpu().numpy()
    return QALogits(start=start, end=end)


# --------------------------------------------------------------------------- spans


@dataclasses.dataclass(frozen=True)
class Answer:
    """The best span of one question over its windows.

    Attributes
    ----------
    text : str
        The span's characters in the context; ``""`` when no window holds a
        valid span.
    score : float
        Its start + end logit; ``-inf`` when there is none.
    null_score : float
        Start + end logit of ``[CLS]``, the least over the question's windows.
    """

    text: str
    score: float
    null_score: float


def window_span(start, end, in_context, *, n_best: int = 20, max_answer_length: int = 30) -> dict | None:
    """Best span of one window: ``argmax s_i + e_j`` over its candidates, or None.

    Candidates are the ``n_best`` context tokens of highest start logit ``s``
    and the ``n_best`` of highest end logit ``e``; a pair counts when
    ``0 <= j - i < max_answer_length``.

    Parameters
    ----------
    start, end : ndarray of float, shape (T,)
    in_context : ndarray of bool, shape (T,)

    Returns
    -------
    dict or None
        ``start``, ``end`` (token positions, inclusive) and ``score``; None
        when no pair counts.
    """
    positions = np.flatnonzero(in_context)
    starts = positions[np.argsort(-start[positions], kind="stable")[:n_best]]  # (n,)
    ends = positions[np.argsort(-end[positions], kind="stable")[:n_best]]  # (n,)
    length = ends[None, :] - starts[:, None] + 1  # (n, n)
    score = start[starts][:, None] + end[ends][None, :]  # (n, n)
    score = np.where((length >= 1) & (length <= max_answer_length), score, -np.inf)
    if score.size == 0 or not np.isfinite(score.max()):
        return None
    i, j = np.unravel_index(np.argmax(score), score.shape)
    return {"start": int(starts[i]), "end": int(ends[j]), "score": float(score[i, j])}


def best_answers(windows: Windows, logits: QALogits, contexts, *, n_best: int = 20,
                 max_answer_length: int = 30) -> list[Answer]:
    """The best span of each question over all its windows (:func:`window_span`), with its null score.

    Parameters
    ----------
    windows : Windows
        Of ``N`` questions.
    logits : QALogits
        Of those windows, shape (F, T) each.
    contexts : sequence of str, length N

    Returns
    -------
    list of Answer, length N
    """
    bounds = np.searchsorted(windows.example, np.arange(len(contexts) + 1))  # windows of question i: bounds[i:i+2]
    return [
        _question_answer(windows, logits, range(bounds[i], bounds[i + 1]), context, n_best, max_answer_length)
        for i, context in enumerate(contexts)
    ]


def _question_answer(windows, logits, rows, context, n_best, max_answer_length) -> Answer:
    """The best span over windows ``rows`` of one question (the first window wins a tie)."""
    null = min(float(logits.start[f, windows.cls[f]] + logits.end[f, windows.cls[f]]) for f in rows)
    best = None
    for f in rows:
        span = window_span(logits.start[f], logits.end[f], windows.in_context[f], n_best=n_best,
                           max_answer_length=max_answer_length)
        if span is not None and (best is None or span["score"] > best["score"]):
            best = {**span, "window": f}
    if best is None:
        return Answer(text="", score=-np.inf, null_score=null)
    first, last = windows.offsets[best["window"], best["start"], 0], windows.offsets[best["window"], best["end"], 1]
    return Answer(text=context[first:last], score=best["score"], null_score=null)


def choose_text(answer: Answer, *, version_2: bool = False, null_threshold: float = 0.0) -> str:
    """The predicted text: the span, or for v2 ``""`` when ``null_score - score > null_threshold``."""
    if version_2 and answer.null_score - answer.score > null_threshold:
        return ""
    return answer.text


# --------------------------------------------------------------------------- entry points


def squad_predictions(
    model,
    tokenizer,
    dataset,
    *,
    max_length: int = 384,
    stride: int = 128,
    batch_size: int = 32,
    n_best: int = 20,
    max_answer_length: int = 30,
    version_2: bool = False,
    null_threshold: float = 0.0,
    disable_progress: bool | None = None,
) -> dict[str, str]:
    """Answer text per question id, read off the model's QA head.

    Parameters
    ----------
    model : transformers ``*ForQuestionAnswering`` (BERT, DistilBERT, ...)
    tokenizer : its fast tokenizer
    dataset : datasets.Dataset
        Rows with ``id``, ``question`` and ``context`` (:func:`load_squad`).
    max_length, stride
        Window size and overlap in tokens (:func:`squad_windows`).
    batch_size : int
        Windows per forward pass.
    n_best, max_answer_length
        Span candidates per logit and the longest span in tokens
        (:func:`window_span`).
    version_2, null_threshold
        Allow no answer, when the null score beats the best span by more than
        ``null_threshold`` (:func:`choose_text`).
    disable_progress : bool or None

    Returns
    -------
    dict of str -> str
        One entry per row of ``dataset``.
    """
    if not type(model).__name__.endswith("ForQuestionAnswering"):
        raise TypeError(
            f"{type(model).__name__} has no question-answering head: SQuAD scores the start/end logits of a "
            f"*ForQuestionAnswering model (e.g. AutoModelForQuestionAnswering.from_pretrained(...))"
        )
    if len(dataset) == 0:
        raise ValueError("an empty dataset: pass at least one question")
    contexts = dataset["context"][:]
    windows = squad_windows(tokenizer, dataset["question"][:], contexts, max_length=max_length, stride=stride)
    logits = qa_logits(model, windows, batch_size=batch_size, disable_progress=disable_progress)
    answers = best_answers(windows, logits, contexts, n_best=n_best, max_answer_length=max_answer_length)
    texts = [choose_text(answer, version_2=version_2, null_threshold=null_threshold) for answer in answers]
    return dict(zip(dataset["id"][:], texts))


def squad_metrics(
    model,
    tokenizer,
    dataset=None,
    *,
    version_2: bool = False,
    limit: int | None = None,
    **options,
) -> dict:
    """SQuAD exact match and F1 of a question-answering model on its own head's answers.

    Parameters
    ----------
    model, tokenizer : ``*ForQuestionAnswering`` model and its fast tokenizer
    dataset : datasets.Dataset, optional
        :func:`load_squad` rows; the validation split of the hub by default.
    version_2 : bool
        SQuAD v2.0: no-answer predictions and the HasAns / NoAns breakdown.
    limit : int, optional
        Evaluate only ``limit`` questions spread evenly over the set.
    **options
        ``max_length``, ``stride``, ``batch_size``, ``n_best``,
        ``max_answer_length``, ``null_threshold``, ``disable_progress`` of
        :func:`squad_predictions`.

    Returns
    -------
    dict
        :func:`squad_scores`: ``exact_match``, ``f1`` (percent) and
        ``examples``, and for v2 the breakdown.
    """
    dataset = _spread_rows(load_squad("validation", version_2=version_2) if dataset is None else dataset, limit)
    predictions = squad_predictions(model, tokenizer, dataset, version_2=version_2, **options)
    golds = [answers["text"] for answers in dataset["answers"][:]]
    references = [{"id": key, "answers": texts} for key, texts in zip(dataset["id"][:], golds)]
    return squad_scores(predictions, references, version_2=version_2)


__all__ = [
    "SQUAD_FEATURES",
    "SQUAD_HUB",
    "SQUAD_SPLITS",
    "Answer",
    "QALogits",
    "Windows",
    "best_answers",
    "choose_text",
    "exact_match",
    "load_squad",
    "normalize_answer",
    "qa_logits",
    "question_scores",
    "squad_metrics",
    "squad_predictions",
    "squad_scores",
    "squad_windows",
    "token_f1",
    "window_span",
]
