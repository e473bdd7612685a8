"""Task models scored by their own heads: GLUE classifiers and the STS-B regressor.

A fine-tuned ``*ForSequenceClassification`` model is scored as its authors
score it: the head's logits on the task's dev set, under the task's GLUE
metric. Its classes are matched to the dataset's by name
(``config.id2label`` against the dataset's ``ClassLabel`` names), never by
position alone: a model whose labels cannot be matched is refused. The only
exception is the generic ``LABEL_0 .. LABEL_{C-1}`` that transformers writes
when a model was saved without names; those are taken in the dataset's order,
and the result says so (``label_map``).

GLUE metrics
------------
=============================  ========================================
task                           metrics
=============================  ========================================
SST-2, QNLI, RTE, MNLI         accuracy
MRPC, QQP                      F1 of the positive class, accuracy
STS-B                          Pearson and Spearman of the regression head
CoLA                           Matthews correlation
=============================  ========================================
"""

from __future__ import annotations

import re

import numpy as np
import scipy.stats
import torch
from tqdm import tqdm

from statlab import data

from ._common import _eval_mode, _model_inputs, _spread_rows
from .probe import _binary_f1

HEAD_METRICS = {
    "sst2": ("accuracy",), "qnli": ("accuracy",), "rte": ("accuracy",), "mnli": ("accuracy",),
    "mrpc": ("f1", "accuracy"), "qqp": ("f1", "accuracy"),
    "stsb": ("pearson", "spearman"), "cola": ("matthews",),
}
_GENERIC_LABEL = re.compile(r"label_(\d+)")
_SYNONYMS = {"neg": "negative", "pos": "positive", "not_paraphrase": "not_equivalent",
             "paraphrase": "equivalent", "contradictory": "contradiction"}


class LabelMismatchError(ValueError):
    """A task model's classes cannot be matched to the dataset's labels."""


def head_kind(model) -> str | None:
    """``"sequence-classification"``, ``"question-answering"``, or None for a bare backbone or an LM."""
    name = type(model).__name__
    for suffix, kind in (("ForSequenceClassification", "sequence-classification"),
                         ("ForQuestionAnswering", "question-answering")):
        if name.endswith(suffix):
            return kind
    return None


def label_map(config, task: str) -> tuple[np.ndarray, str]:
    """Which model class each dataset class is, and how that was decided.

    Parameters
    ----------
    config : transformers.PretrainedConfig
        ``num_labels`` and ``id2label`` of the task model.
    task : str
        A classification task of :data:`HEAD_METRICS` (not ``stsb``).

    Returns
    -------
    order : ndarray of int, shape (C,)
        ``order[c]`` is the model's class index for dataset class ``c``.
    how : str
        ``"names"`` (matched by name) or ``"generic"`` (``LABEL_i`` names,
        taken in the dataset's order).

    Raises
    ------
    LabelMismatchError
        If the class counts differ, or the names do not match one to one.
    """
    names = data.features(task)["label"].names  # dataset classes, in the dataset's order
    model_names = [str(config.id2label[i]) for i in range(config.num_labels)]
    if len(model_names) != len(names):
        raise LabelMismatchError(f"the model has {len(model_names)} classes ({', '.join(model_names)}) and {task} "
                                 f"has {len(names)} ({', '.join(names)}): it was not fine-tuned for {task}")
    generic = [_GENERIC_LABEL.fullmatch(_normal(n)) for n in model_names]
    if all(generic) and [int(m.group(1)) for m in generic] == list(range(len(names))):
        return np.arange(len(names)), "generic"
    position = {_normal(n): i for i, n in enumerate(model_names)}
    order = [position.get(_normal(n)) for n in names]
    if None in order or len(set(order)) != len(order):
        raise LabelMismatchError(
            f"the model's labels ({', '.join(model_names)}, config.id2label) do not match {task}'s "
            f"({', '.join(names)}); fix the model's config.id2label/label2id to name {task}'s classes")
    return np.asarray(order), "names"


def glue_scores(predicted: np.ndarray, gold: np.ndarray, task: str) -> dict:
    """The GLUE metrics of :data:`HEAD_METRICS` for dev predictions.

    Parameters
    ----------
    predicted, gold : ndarray, shape (S,)
        Dataset class indices (classification) or scores (``stsb``).
    task : str

    Returns
    -------
    dict
        The task's metrics (floats) and ``n``.
    """
    if task == "stsb":
        scores = {"pearson": float(scipy.stats.pearsonr(predicted, gold)[0]),
                  "spearman": float(scipy.stats.spearmanr(predicted, gold)[0])}
    else:
        scores = {"accuracy": float(np.mean(predicted == gold))}
        if task in ("mrpc", "qqp"):
            scores = {"f1": _binary_f1(predicted, gold), **scores}
        if task == "cola":
            scores = {"matthews": _matthews(predicted, gold)}
    return {**scores, "n": len(gold)}


def head_metrics(model, tokenizer, task: str, *, limit: int | None = None, batch_size: int = 64,
                 max_length: int = 128, disable_progress: bool | None = None) -> dict:
    """Dev metrics of a ``*ForSequenceClassification`` model through its own head.

    Parameters
    ----------
    model, tokenizer : a GLUE task model and its tokenizer
    task : str
        A key of :data:`HEAD_METRICS`; MNLI is scored on its matched dev set.
    limit : int, optional
        Score only ``limit`` dev examples spread evenly over the set.
    batch_size, max_length : int
        Examples per forward pass; tokens per example at most (pairs encoded
        together, as the model was trained).
    disable_progress : bool or None

    Returns
    -------
    dict
        The metrics of :func:`glue_scores`, ``scored_by`` ``"head"`` and
        ``label_map`` (``"names"``, ``"generic"`` or ``"regression"``).
    """
    if task not in HEAD_METRICS:
        raise ValueError(f"no GLUE metric for task {task!r}; task models are scored on {', '.join(HEAD_METRICS)}")
    if head_kind(model) != "sequence-classification":
        raise ValueError(f"{type(model).__name__} has no sequence-classification head to score {task} with")
    if task == "stsb":
        if model.config.num_labels != 1:
            raise LabelMismatchError(f"STS-B is scored by a regression head (num_labels=1); the model has "
                                     f"{model.config.num_labels} classes")
        order, how = None, "regression"
    else:
        order, how = label_map(model.config, task)
    rows = _spread_rows(data.load_task(task, "validation"), limit)
    logits = head_logits(model, tokenizer, data.task_texts(rows, task), batch_size=batch_size, max_length=max_length,
                         disable_progress=disable_progress)
    gold = np.asarray(rows["label"][:])  # (S,)
    if order is None:
        predicted = logits[:, 0].numpy()  # (S,) regression scores
    else:
        predicted = logits[:, order].argmax(-1).numpy()  # (S,) dataset class indices
    return {**glue_scores(predicted, gold, task), "scored_by": "head", "label_map": how}


def head_logits(model, tokenizer, texts, *, batch_size: int = 64, max_length: int = 128,
                disable_progress: bool | None = None) -> torch.Tensor:
    """The head's logits on ``texts``: ``(S, C)`` fp32 on the CPU, in the order of ``texts``.

    ``texts``: tuples of str as the model reads them (:func:`statlab.data.task_texts`),
    batched by length to cut padding. The columns are the model's own classes;
    :func:`label_map` orders them as the dataset's.
    """
    batches, order = data.length_sorted_batches(tokenizer, texts, max_length=max_length, batch_size=batch_size)
    parts = []
    with _eval_mode(model), torch.inference_mode():
        for batch in tqdm(batches, desc="head", unit="batch", disable=disable_progress):
            parts.append(model(**_model_inputs(model, batch)).logits.float().cpu())  # (B, C)
    logits = torch.empty_like(torch.cat(parts))
    logits[order] = torch.cat(parts)
    return logits


def _normal(name: str) -> str:
    name = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    return _SYNONYMS.get(name, name)


def _matthews(predicted: np.ndarray, gold: np.ndarray) -> float:
    """Matthews correlation of binary predictions; 0 when a row or column of the confusion matrix is empty."""
    tp = float(np.sum((predicted == 1) & (gold == 1)))
    tn = float(np.sum((predicted == 0) & (gold == 0)))
    fp = float(np.sum((predicted == 1) & (gold == 0)))
    fn = float(np.sum((predicted == 0) & (gold == 1)))
    denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / denominator) if denominator else 0.0
