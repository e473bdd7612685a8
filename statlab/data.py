"""Evaluation and calibration data: one interface, offline or from the hub (DESIGN §3, §4).

With the environment variable ``STATLAB_DATA_DIR`` set, every loader reads the
local copies described in that folder's README (GLUE SST-2, STS-B, MRPC and
WikiText-2); without it, :func:`datasets.load_dataset` fetches the official
copies (``nyu-mll/glue`` and ``Salesforce/wikitext``, ``wikitext-2-raw-v1``).
Both routes return a :class:`datasets.Dataset` with the same columns and types:

============  =======================  ==========================================
task          splits                   columns
============  =======================  ==========================================
``stsb``      validation               sentence1, sentence2, label (float32, 0–5)
``sst2``      train, validation        sentence, label (0 negative, 1 positive)
``mrpc``      train, validation        sentence1, sentence2, label (1 equivalent)
``wikitext2`` test, validation         text (one row per line, as on the hub)
============  =======================  ==========================================

The rest of GLUE (``qnli``, ``rte``, ``qqp``, ``cola``, ``mnli``) and STS-B's
training split come from the hub only, with the hub's columns and label names
(:data:`TASKS`); with ``STATLAB_DATA_DIR`` set they are still fetched, and a
clear error says so when there is no network.

``dev`` is accepted as an alias of ``validation``. Two differences between the
routes remain, both in the local files, not in the code: the local WikiText-2
test file has no blank lines (the hub's rows include empty ones), and the local
WikiText-2 validation file is the tokenised one (``<unk>`` kept), used only as
calibration text.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch

from statlab.calibration import GLUE_TASKS  # tasks of fine-tuned task models (re-exported)
from statlab.inputs import check_int

DATA_DIR_ENV = "STATLAB_DATA_DIR"

TASKS: dict[str, tuple[str, ...]] = {
    "stsb": ("train", "validation"),
    "sst2": ("train", "validation"),
    "mrpc": ("train", "validation"),
    "wikitext2": ("test", "validation"),
    # the rest of GLUE: from the hub only (no offline copy)
    "qnli": ("train", "validation"),
    "rte": ("train", "validation"),
    "qqp": ("train", "validation"),
    "cola": ("train", "validation"),
    "mnli": ("train", "validation_matched", "validation_mismatched"),
}
CALIBRATION_SOURCES = ("sst2", "mrpc", "wikitext2")

_SPLIT_ALIASES = {"dev": "validation"}
_MNLI_ALIASES = {"validation": "validation_matched"}  # MNLI's dev set is its matched half

# GLUE's label names (nyu-mll/glue's ClassLabel names); STS-B is a float score
_LABEL_NAMES = {
    "sst2": ["negative", "positive"],
    "mrpc": ["not_equivalent", "equivalent"],
    "qnli": ["entailment", "not_entailment"],
    "rte": ["entailment", "not_entailment"],
    "qqp": ["not_duplicate", "duplicate"],
    "cola": ["unacceptable", "acceptable"],
    "mnli": ["entailment", "neutral", "contradiction"],
}

_LOCAL_FILES = {
    ("stsb", "validation"): "glue/STS-B/dev.tsv",
    ("sst2", "train"): "glue/SST-2/train.tsv",
    ("sst2", "validation"): "glue/SST-2/dev.tsv",
    ("mrpc", "train"): "glue/MRPC/train.tsv",
    ("mrpc", "validation"): "glue/MRPC/dev.tsv",
    ("wikitext2", "test"): "wikitext-2/wiki.test.raw",
    ("wikitext2", "validation"): "wikitext-2/wiki.valid.tokens",
}

# Our column -> the header names it may have in a local TSV (official GLUE first).
_TSV_COLUMNS = {
    "stsb": {"sentence1": ("sentence1",), "sentence2": ("sentence2",), "label": ("score",)},
    "sst2": {"sentence": ("sentence", "text"), "label": ("label",)},
    "mrpc": {"sentence1": ("#1 String",), "sentence2": ("#2 String",), "label": ("Quality",)},
}

# The texts a model calibrated on a source is evaluated on; calibration never draws them.
_EVALUATION_SETS = {
    "sst2": (("stsb", "validation"), ("sst2", "validation"), ("mrpc", "validation")),
    "mrpc": (("stsb", "validation"), ("sst2", "validation"), ("mrpc", "validation")),
    "wikitext2": (("wikitext2", "test"),),
}

_TEXT_COLUMNS = {
    "stsb": ("sentence1", "sentence2"),
    "sst2": ("sentence",),
    "mrpc": ("sentence1", "sentence2"),
    "wikitext2": ("text",),
    "qnli": ("question", "sentence"),
    "rte": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"),
    "cola": ("sentence",),
    "mnli": ("premise", "hypothesis"),
}


def data_dir() -> Path | None:
    """The local data folder named by ``STATLAB_DATA_DIR``, or ``None`` to use the hub.

    Returns
    -------
    Path or None
        The folder, or ``None`` when the variable is unset or empty.

    Raises
    ------
    FileNotFoundError
        If the variable names a folder that does not exist.
    """
    value = os.environ.get(DATA_DIR_ENV, "")
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"{DATA_DIR_ENV}={value!r} is not a folder. Point it at the offline data folder "
            f"(the one with glue/ and wikitext-2/, see its README) or unset it to download "
            f"the datasets from the Hugging Face hub."
        )
    return path


def features(task: str) -> datasets.Features:
    """The columns and types :func:`load_task` returns for ``task``, on either route.

    Parameters
    ----------
    task : str
        A key of :data:`TASKS`.

    Returns
    -------
    datasets.Features
        The text columns of :data:`_TEXT_COLUMNS`, and ``label``: a
        ``ClassLabel`` with GLUE's names, a float score (STS-B), or none
        (``wikitext2``).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    columns = {name: datasets.Value("string") for name in _TEXT_COLUMNS[task]}
    if task == "stsb":
        columns["label"] = datasets.Value("float32")
    elif task in _LABEL_NAMES:
        columns["label"] = datasets.ClassLabel(names=_LABEL_NAMES[task])
    return datasets.Features(columns)


def load_task(task: str, split: str) -> datasets.Dataset:
    """One split of an evaluation or calibration dataset.

    Parameters
    ----------
    task : {"stsb", "sst2", "mrpc", "wikitext2"}
    split : str
        ``"train"``, ``"validation"`` (alias ``"dev"``) or ``"test"``; see
        :data:`TASKS` for the splits of each task.

    Returns
    -------
    datasets.Dataset
        Columns and types of :func:`features` (``task``), rows in file order.

    Raises
    ------
    ValueError
        If the task or split is unknown.
    FileNotFoundError
        If ``STATLAB_DATA_DIR`` is set but the file is not in it.
    """
    split = _check_split(task, split)
    root = data_dir()
    if root is None:
        return _load_hub(task, split)
    if (task, split) not in _LOCAL_FILES:
        try:
            return _load_hub(task, split)
        except Exception as error:  # noqa: BLE001 - offline, or the hub refused: say both
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
            raise FileNotFoundError(
                f"{task} {split} has no offline copy in {DATA_DIR_ENV} (it holds "
                f"{', '.join(sorted({f'{t} {s}' for t, s in _LOCAL_FILES}))}), and the hub could not "
                f"provide it: {reason}") from None
    return _load_local(root / _LOCAL_FILES[task, split], task)


def calibration_texts(source: str, n: int, *, seed: int = 0) -> list[str]:
    """``n`` distinct unlabeled texts for calibration, sampled without replacement.

    The pool is the training split of ``sst2`` (its sentences) or ``mrpc`` (all
    ``sentence1`` and ``sentence2``), or the non-empty lines of WikiText-2
    validation. Texts are stripped of surrounding whitespace and de-duplicated,
    and every text that also occurs in an evaluation set of that source (STS-B,
    SST-2 and MRPC validation for GLUE sources; WikiText-2 test) is removed, so
    calibration and evaluation never share a text.

    Parameters
    ----------
    source : {"sst2", "mrpc", "wikitext2"}
    n : int
        Number of texts, ``1 <= n <= pool size``.
    seed : int
        Seed of the :class:`numpy.random.Generator` that draws the sample.

    Returns
    -------
    list of str, length n
        In sampled order.

    Raises
    ------
    ValueError
        If ``source`` is unknown or ``n`` is outside ``[1, pool size]``.
    """
    if source not in CALIBRATION_SOURCES:
        valid = ", ".join(CALIBRATION_SOURCES)
        raise ValueError(f"unknown calibration source {source!r}; valid sources: {valid}")
    pool = _calibration_pool(source)
    if not 1 <= n <= len(pool):
        raise ValueError(
            f"n={n} calibration texts requested from {source!r}, which has {len(pool)} usable "
            f"texts; ask for between 1 and {len(pool)}."
        )
    picks = np.random.default_rng(seed).choice(len(pool), size=n, replace=False)
    return [pool[i] for i in picks]


def text_columns(task: str) -> tuple[str, ...]:
    """The text columns of ``task``, in the order a task model reads them (``sentence1, sentence2``)."""
    if task not in _TEXT_COLUMNS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    return _TEXT_COLUMNS[task]


def task_texts(dataset: datasets.Dataset, task: str) -> list[tuple[str, ...]]:
    """Each example's text fields in the order the task model reads them.

    Returns
    -------
    list of tuple of str, length S
        1-tuples for single-sentence tasks (SST-2, CoLA), 2-tuples for pair
        tasks (``sentence1, sentence2``; MNLI ``premise, hypothesis``).
    """
    return list(zip(*(dataset[column][:] for column in text_columns(task))))


def task_calibration_examples(task: str, n: int, *, seed: int = 0) -> list[tuple[str, ...]]:
    """``n`` distinct training examples of a GLUE task, unlabeled: a task model's calibration.

    The paper's protocol for fine-tuned models: the examples are drawn without
    replacement from the task's own training split, as the model reads them
    (pairs for pair tasks; :func:`task_texts`). Examples sharing a text with
    the task's validation split are left out, so calibration and evaluation
    never share a sentence.

    Parameters
    ----------
    task : str
        One of :data:`GLUE_TASKS`.
    n : int
        ``1 <= n <= pool size``.
    seed : int
        Seed of the :class:`numpy.random.Generator` that draws the sample.

    Returns
    -------
    list of tuple of str, length n
        In sampled order.
    """
    return [example for example, _ in _task_sample(task, n, seed)]


def task_calibration_batches(tokenizer, task: str, n: int, *, seed: int = 0, labels: bool = False,
                             max_length: int = 128, batch_size: int = 64) -> list[dict[str, torch.Tensor]]:
    """:func:`task_calibration_examples` tokenised as the task model reads them, sorted by length.

    Parameters
    ----------
    labels : bool
        Add each example's gold ``labels`` (B,) to its batch: for methods that
        use them (Kwon et al.'s Fisher of the task loss); STAT ignores them.

    Returns
    -------
    list of dict
        :func:`tokenize_batches`'s batches (and ``labels``: int64 classes,
        float32 for STS-B).
    """
    sample = sorted(_task_sample(task, n, seed), key=lambda pair: sum(map(len, pair[0])))
    batches = tokenize_batches(tokenizer, [example for example, _ in sample], max_length=max_length,
                               batch_size=batch_size)
    if labels:
        gold = torch.tensor([label for _, label in sample], dtype=torch.float32 if task == "stsb" else torch.long)
        for batch, part in zip(batches, gold.split(batch_size)):
            batch["labels"] = part
    return batches


@dataclass(frozen=True)
class LabelledExamples:
    """Examples of a GLUE task with their gold labels.

    Attributes
    ----------
    texts : list of tuple of str, length S
        As the model reads them (:func:`task_texts`).
    labels : ndarray, shape (S,)
        Class indices of the dataset (int64), or STS-B scores (float64).
    """

    texts: list
    labels: np.ndarray


def held_out_examples(task: str, n: int, *, calibration_sizes=(512,), seed: int = 0) -> LabelledExamples:
    """``n`` labelled training examples outside every calibration draw: a split to measure on, not report.

    The pool is the one :func:`task_calibration_examples` draws from (distinct
    texts, none shared with the dev set). Every draw of ``calibration_sizes``
    examples under ``seed`` is removed from it, and ``n`` of the rest are
    drawn under ``seed + 1``. A fine-tuned task model has trained on its
    training split, so its accuracy here is a training accuracy: read it for
    agreement with the dense model, not as a score.

    Parameters
    ----------
    task : str
        One of :data:`GLUE_TASKS`.
    n : int
        ``1 <= n <=`` what the draws leave.
    calibration_sizes : sequence of int
        The calibration sizes whose draws are excluded (each ``task_calibration_examples(task, size, seed=seed)``).
    seed : int

    Returns
    -------
    LabelledExamples
        In drawn order.
    """
    pool = _task_pool(task)
    taken = set()
    for size in calibration_sizes:
        taken.update(_draw(len(pool), check_int("calibration size", size, minimum=1), seed, task).tolist())
    rest = np.setdiff1d(np.arange(len(pool)), np.fromiter(taken, dtype=np.int64, count=len(taken)))
    if not 1 <= n <= len(rest):
        raise ValueError(f"n={n} held-out examples requested from {task} train, which has {len(rest)} outside the "
                         f"calibration draws of {list(calibration_sizes)}; ask for between 1 and {len(rest)}.")
    picks = rest[np.random.default_rng(seed + 1).choice(len(rest), size=n, replace=False)]
    dtype = np.float64 if task == "stsb" else np.int64
    return LabelledExamples([pool[i][0] for i in picks], np.array([pool[i][1] for i in picks], dtype=dtype))


def _task_sample(task: str, n: int, seed: int) -> list[tuple[tuple[str, ...], float]]:
    """``n`` ``(texts, label)`` drawn from ``task``'s training pool (distinct texts, none in dev)."""
    pool = _task_pool(task)
    return [pool[i] for i in _draw(len(pool), n, seed, task)]


def _draw(size: int, n: int, seed: int, task: str) -> np.ndarray:
    """The indices (n,) of a calibration draw of ``n`` from a pool of ``size``."""
    if not 1 <= n <= size:
        raise ValueError(f"n={n} calibration examples requested from {task} train, which has {size} "
                         f"usable examples; ask for between 1 and {size}.")
    return np.random.default_rng(seed).choice(size, size=n, replace=False)


def _task_pool(task: str) -> list[tuple[tuple[str, ...], float]]:
    """Every ``(texts, label)`` of ``task``'s training split with distinct, non-empty texts, none in dev."""
    if task not in GLUE_TASKS:
        raise ValueError(f"task {task!r} has no training examples to calibrate on; GLUE tasks: "
                         f"{', '.join(GLUE_TASKS)}")
    split = "validation_matched" if task == "mnli" else "validation"
    evaluated = {text.strip() for example in task_texts(load_task(task, split), task) for text in example}
    train = load_task(task, "train")
    labelled = zip((tuple(text.strip() for text in example) for example in task_texts(train, task)),
                   train["label"][:])
    return list({example: label for example, label in labelled
                 if all(example) and not evaluated.intersection(example)}.items())


def tokenize_batches(
    tokenizer, texts, *, max_length: int = 128, batch_size: int = 32
) -> list[dict[str, torch.Tensor]]:
    """Tokenise texts, or text pairs, into padded batches.

    Parameters
    ----------
    tokenizer : transformers tokenizer
    texts : sequence of str, or of 1- or 2-tuples of str, length S
        A 2-tuple is one example of a pair task, encoded together as the task
        model sees it (``[CLS] a [SEP] b [SEP]`` with token types for BERT).
    max_length : int
        Longer texts are truncated to this many tokens (special tokens
        included); pairs lose tokens from the longer member first.
    batch_size : int
        Texts per batch; the last batch may be smaller.

    Returns
    -------
    list of dict
        One dict per batch with ``input_ids`` and ``attention_mask`` of shape
        ``(B, T_b)`` (int64; ``T_b`` the longest text of the batch) and
        ``token_type_ids`` when the tokenizer gives them.
    """
    if batch_size < 1 or max_length < 1:
        raise ValueError(
            f"batch_size={batch_size} and max_length={max_length} must both be at least 1"
        )
    texts = [text[0] if isinstance(text, tuple) and len(text) == 1 else text for text in texts]
    pairs = bool(texts) and isinstance(texts[0], tuple)
    if any(isinstance(text, tuple) != pairs or (pairs and len(text) != 2) for text in texts):
        raise ValueError("texts must all be strings or all be 2-tuples of strings (pairs)")
    keep = ("input_ids", "attention_mask", "token_type_ids")
    batches = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        members = ([a for a, _ in chunk], [b for _, b in chunk]) if pairs else (chunk,)
        encoded = tokenizer(
            *members,
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        batches.append({key: encoded[key] for key in keep if key in encoded})
    return batches


def length_sorted_batches(tokenizer, texts, *, max_length: int = 128, batch_size: int = 32):
    """:func:`tokenize_batches` of ``texts`` taken shortest first, and the order they were taken in.

    Batching texts of similar token counts cuts the padding an evaluation
    computes on. Returns ``(batches, order)``: ``order (S,)`` int64, the
    position in ``texts`` of each sorted text (stable for equal lengths), so
    per-text results computed batch after batch go back in place with
    ``out[order] = torch.cat(parts)``.
    """
    texts = [text[0] if isinstance(text, tuple) and len(text) == 1 else text for text in texts]
    members = tuple(map(list, zip(*texts))) if texts and isinstance(texts[0], tuple) else (texts,)
    lengths = [len(ids) for ids in tokenizer(*members, truncation=True, max_length=max_length)["input_ids"]]
    order = torch.from_numpy(np.argsort(lengths, kind="stable"))
    batches = tokenize_batches(tokenizer, [texts[i] for i in order.tolist()], max_length=max_length,
                               batch_size=batch_size)
    return batches, order


def token_windows(
    tokenizer,
    split: str = "test",
    *,
    window: int = 512,
    max_tokens: int | None = None,
    n_windows: int | None = None,
) -> torch.Tensor:
    """Non-overlapping token windows of WikiText-2 for perplexity (DESIGN §4).

    The split's rows are joined with ``"\\n\\n"`` and tokenised once (the
    standard perplexity protocol, special tokens as the tokenizer adds them),
    then cut into consecutive windows; the ragged tail is dropped.

    Parameters
    ----------
    tokenizer : transformers tokenizer
    split : {"test", "validation"}
    window : int
        Tokens per window.
    max_tokens : int, optional
        Keep only the first whole windows totalling at most this many tokens.
    n_windows : int, optional
        Keep only the first ``n_windows`` windows. With ``max_tokens`` too, the
        smaller of the two limits wins.

    Returns
    -------
    Tensor of int64, shape (W, window)

    Raises
    ------
    ValueError
        If the limits leave no whole window.
    """
    from statlab.corpora import text_windows  # the one windowing of any text

    text = "\n\n".join(load_task("wikitext2", split)["text"][:])
    return text_windows(tokenizer, text, window=window, max_tokens=max_tokens, n_windows=n_windows,
                        name=f"WikiText-2 {split}")  # (W, window)


def held_out_windows(tokenizer, calibration, *, window: int = 512, max_tokens: int | None = None) -> torch.Tensor:
    """WikiText-2 validation windows that no calibration batch holds: where defaults are measured.

    Parameters
    ----------
    tokenizer : transformers tokenizer
    calibration : list of dict
        Calibration batches whose ``input_ids`` are validation windows (:func:`calibration_windows`).
    window : int
        Tokens per window, as calibration used.
    max_tokens : int, optional
        Keep only the first such windows totalling at most this many tokens (at least one).

    Returns
    -------
    Tensor of int64, shape (W, window)
        In the order of the split.
    """
    drawn = torch.cat([b["input_ids"] for b in calibration])  # (windows, window)
    if drawn.shape[1] != window:
        raise ValueError(f"the calibration windows have {drawn.shape[1]} tokens, not window={window}")
    windows = token_windows(tokenizer, "validation", window=window)
    unseen = ~(windows[:, None, :] == drawn[None]).all(dim=-1).any(dim=1)  # (W,)
    kept = windows[unseen]
    if max_tokens is not None:
        kept = kept[: max(max_tokens // window, 1)]
    if not len(kept):
        raise ValueError("every validation window is in the calibration: draw fewer")
    return kept


def calibration_windows(
    tokenizer, n_windows: int = 128, *, window: int = 512, batch_size: int = 8, seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    """Calibration for decoders: ``n_windows`` token windows of WikiText-2 validation (DESIGN §4).

    The validation split is cut into non-overlapping windows (as
    :func:`token_windows` does); ``n_windows`` of them are drawn without
    replacement with ``numpy.random.default_rng(seed)`` and batched. Full
    windows carry no padding, so the batches hold ``input_ids`` only. The test
    split, which perplexity reports, is never used.

    Returns
    -------
    list of dict
        ``{"input_ids": (B, window)}`` int64 batches, ``B <= batch_size``.

    Raises
    ------
    ValueError
        If the split holds fewer than ``n_windows`` windows.
    """
    if n_windows < 1 or batch_size < 1:
        raise ValueError(f"n_windows={n_windows} and batch_size={batch_size} must both be at least 1")
    pool = token_windows(tokenizer, "validation", window=window)
    if n_windows > pool.shape[0]:
        raise ValueError(
            f"{n_windows} calibration windows of {window} tokens requested; WikiText-2 validation holds "
            f"{pool.shape[0]}: ask for fewer or shorter windows"
        )
    from statlab.corpora import sample_windows

    return sample_windows(pool, n_windows, seed=seed, batch_size=batch_size)


def _check_split(task: str, split: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    split = _SPLIT_ALIASES.get(split, split)
    if task == "mnli":
        split = _MNLI_ALIASES.get(split, split)
    if split not in TASKS[task]:
        raise ValueError(
            f"unknown split {split!r} for task {task!r}; valid splits: "
            f"{', '.join(TASKS[task])} ('dev' means 'validation')"
        )
    return split


def _load_hub(task: str, split: str) -> datasets.Dataset:
    if task == "wikitext2":
        hub = datasets.load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split=split)
    else:
        hub = datasets.load_dataset("nyu-mll/glue", task, split=split)
    extra = [name for name in hub.column_names if name not in features(task)]
    return hub.remove_columns(extra).cast(features(task))


def _load_local(path: Path, task: str) -> datasets.Dataset:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from {DATA_DIR_ENV}; restore the offline data folder "
            f"(see its README) or unset {DATA_DIR_ENV} to download from the hub."
        )
    columns = {"text": _wikitext_rows(path)} if task == "wikitext2" else _tsv_columns(path, task)
    return datasets.Dataset.from_dict(columns, features=features(task))


def _wikitext_rows(path: Path) -> list[str]:
    """Lines in the hub's format: ``line + "\\n"``, or ``""`` for a blank line."""
    text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line + "\n" if line.strip() else "" for line in lines]


def _tsv_columns(path: Path, task: str) -> dict[str, list]:
    """Columns of a GLUE TSV; quotes are literal characters (``QUOTE_NONE``)."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        header, *rows = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
    bad = next((i for i, row in enumerate(rows) if len(row) != len(header)), None)
    if bad is not None:
        raise ValueError(
            f"{path}: data row {bad + 1} has {len(rows[bad])} fields, the header "
            f"{len(header)}; the file is not a GLUE TSV, restore it from the offline data folder."
        )
    convert = float if task == "stsb" else int
    columns = {}
    for name, candidates in _TSV_COLUMNS[task].items():
        position = _header_position(header, candidates, path)
        values = [row[position] for row in rows]
        columns[name] = [convert(v) for v in values] if name == "label" else values
    return columns


def _header_position(header: list[str], candidates: tuple[str, ...], path: Path) -> int:
    for name in candidates:
        if name in header:
            return header.index(name)
    raise ValueError(
        f"{path}: none of the columns {candidates} in its header {header}; "
        f"restore the file from the offline data folder."
    )


def _calibration_pool(source: str) -> list[str]:
    """Distinct stripped training texts of ``source`` absent from its evaluation sets."""
    split = "validation" if source == "wikitext2" else "train"
    excluded = {
        text
        for task, eval_split in _EVALUATION_SETS[source]
        for text in _stripped_texts(load_task(task, eval_split), task)
    }
    candidates = _stripped_texts(load_task(source, split), source)
    return [text for text in dict.fromkeys(candidates) if text and text not in excluded]


def _stripped_texts(dataset: datasets.Dataset, task: str) -> list[str]:
    return [text.strip() for column in _TEXT_COLUMNS[task] for text in dataset[column][:]]
