"""Text from anywhere for calibration and perplexity: a file, a ``datasets`` split, PTB, C4 (issue 12).

A :class:`Corpus` holds text two ways — the examples an encoder calibrates on
(one per line or row) and the running text a decoder's windows are cut from —
and a record of where it came from (a file's size and SHA-256, a dataset's
name, config, split and column, the preprocessing), which plans and results
carry.

* :func:`read_file` — ``.txt`` (one example per non-empty line; the whole file
  is the running text) or ``.jsonl`` (one JSON object per line, its ``text``
  field or another).
* :func:`parse_dataset_spec` and :func:`load_dataset_corpus` —
  ``NAME[:CONFIG]:SPLIT[:COLUMN]`` through :func:`datasets.load_dataset`.
* :func:`ptb_test`, :func:`c4_validation` — the pruning literature's other two
  perplexity corpora, from the hub (a network is needed).
* :func:`text_windows` — the WikiText-2 windowing for any text: tokenised once
  (cached in memory per tokenizer and text), cut into consecutive windows.
* :func:`sample_windows` — calibration windows drawn seeded from such a pool.
"""

from __future__ import annotations

import collections
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch

TEXT_SUFFIXES = (".txt", ".jsonl")
DEFAULT_TEXT_FIELD = "text"
JOIN = "\n\n"  # rows of a dataset become running text as WikiText-2's do (statlab.data.token_windows)

# PTB: the text-only Penn Treebank (Mikolov's 10k-word version), test split, column "sentence". The
# canonical id "ptb_text_only" moved under the "ptb-text-only" namespace; its repository holds a loading
# script, which datasets >= 4 no longer runs, so the hub's Parquet export (refs/convert/parquet, one
# folder per config) is read when the plain id is refused for that reason.
PTB_HUB = "ptb-text-only/ptb_text_only"
PTB_CONFIG = "penn_treebank"
PTB_PARQUET = "refs/convert/parquet"
# C4: the first English validation shard, as SparseGPT / Wanda evaluate on it.
C4_HUB = "allenai/c4"
C4_SHARD = "en/c4-validation.00000-of-00008.json.gz"
C4_WINDOWS = 256  # windows of the protocol: the first 256 × window tokens


class CorpusError(ValueError):
    """Text that cannot serve: an empty or binary file, a JSON line without the field, a spec that does not parse."""


@dataclass(frozen=True)
class Corpus:
    """Text and where it came from.

    Attributes
    ----------
    name : str
        A short label for reports: ``"notes.txt"``, ``"ptb test"``.
    text : str
        The running text decoders' windows are cut from (:func:`text_windows`).
    examples : tuple of str
        The examples encoders calibrate on: non-empty lines or rows, stripped, in order.
    source : dict
        What a plan or result records: ``path``, ``bytes`` and ``sha256`` of a
        file; ``dataset``, ``config``, ``split``, ``column`` and the SHA-256 of
        the running text for a dataset; ``preprocessing`` where there is one.
    max_tokens : int or None
        A cap the corpus's protocol puts on perplexity (C4: 256 windows); None for none.
    """

    name: str
    text: str
    examples: tuple[str, ...]
    source: dict = field(default_factory=dict)
    max_tokens: int | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """``NAME[:CONFIG]:SPLIT[:COLUMN]``, parsed: the arguments of :func:`datasets.load_dataset`."""

    name: str
    config: str | None
    split: str
    column: str | None

    def __str__(self) -> str:
        parts = [self.name] + ([self.config] if self.config else []) + [self.split]
        if self.column:
            if not self.config:
                parts.insert(1, "")  # NAME::SPLIT:COLUMN, never read back as NAME:CONFIG:SPLIT
            parts.append(self.column)
        return ":".join(parts)


# --------------------------------------------------------------------------- files

def read_file(path, *, text_field: str | None = None) -> Corpus:
    """A ``.txt`` or ``.jsonl`` file as a :class:`Corpus`.

    ``.txt``: the examples are the file's non-empty lines (stripped); the
    running text is the whole file as it is. ``.jsonl``: one JSON object per
    non-blank line; the examples are its ``text_field`` values (stripped, empty
    ones dropped), the running text those values joined with ``"\\n\\n"``.

    Parameters
    ----------
    path : str or os.PathLike
    text_field : str, optional
        ``.jsonl`` only: the field holding the text (default ``"text"``).

    Returns
    -------
    Corpus
        ``source``: ``path`` (absolute), ``bytes``, ``sha256`` (of the file's
        bytes), ``format`` and, for ``.jsonl``, ``text_field``.

    Raises
    ------
    FileNotFoundError
        No such file.
    CorpusError
        A directory, another suffix, NUL bytes or invalid UTF-8, no text, a
        line that is not a JSON object or lacks the field.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"text file {path} does not exist")
    if p.is_dir():
        raise CorpusError(f"{path} is a directory; give a .txt or .jsonl file")
    suffix = p.suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        raise CorpusError(f"{path}: expected a .txt file (plain text) or a .jsonl file (one JSON object per line), "
                          f"got {suffix or 'no suffix'}")
    if text_field is not None and suffix != ".jsonl":
        raise CorpusError(f"a text field ({text_field!r}) names a field of .jsonl lines; {path} is plain text")
    data = p.read_bytes()
    if b"\x00" in data:
        raise CorpusError(f"{path} is a binary file (it holds NUL bytes), not UTF-8 text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CorpusError(f"{path} is not UTF-8 text (invalid byte at offset {error.start}); "
                          "convert it first, e.g. iconv -t UTF-8") from None
    source = {"path": str(p.resolve()), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
              "format": suffix[1:]}
    if suffix == ".txt":
        examples = tuple(line.strip() for line in text.splitlines() if line.strip())
        if not examples:
            raise CorpusError(f"{path} holds no text ({'empty' if not data else 'only blank lines'})")
        return Corpus(p.name, text, examples, source)
    text_field = text_field or DEFAULT_TEXT_FIELD
    values = [_json_field(line, number, text_field, path)
              for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    examples = tuple(v.strip() for v in values if v.strip())
    if not examples:
        raise CorpusError(f"{path} holds no text: " + (f"every {text_field!r} field is empty" if values else
                                                       f"{'empty' if not data else 'only blank lines'}"))
    return Corpus(p.name, JOIN.join(values), examples, {**source, "text_field": text_field})


def _json_field(line: str, number: int, name: str, path) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise CorpusError(f"{path} line {number} is not JSON ({error.msg}); a .jsonl file holds one JSON object "
                          "per line") from None
    if not isinstance(record, dict):
        raise CorpusError(f"{path} line {number} is a JSON {type(record).__name__}, not an object with a "
                          f"{name!r} field")
    if name not in record:
        fields = ", ".join(map(repr, list(record)[:8])) or "none"
        raise CorpusError(f"{path} line {number} has no {name!r} field (its fields: {fields}); name the field "
                          "that holds the text (--text-field)")
    if not isinstance(record[name], str):
        raise CorpusError(f"{path} line {number}: field {name!r} is a JSON {type(record[name]).__name__}, "
                          "not a string")
    return record[name]


# --------------------------------------------------------------------------- datasets

_PART = re.compile(r"(?:[^:\[]|\[[^\]]*\])+")  # a field of the spec: ':' inside a slice [..] is no separator
_NAME = re.compile(r"^[\w.~/-]+$")
_SPLIT_WORD = r"(?:train|validation|valid|test|dev)(?:_\w+)?(?:\[[^\[\]]*\])?"
_SPLIT = re.compile(rf"^{_SPLIT_WORD}(?:\+{_SPLIT_WORD})*$")  # train, validation_matched, train[:10%]+test
_ANY_SPLIT = re.compile(r"^[\w.-]+(?:\[[^\[\]]*\])?(?:\+[\w.-]+(?:\[[^\[\]]*\])?)*$")
_FIELD = re.compile(r"^[^:\[\]]+$")
SPEC_FORM = "NAME[:CONFIG]:SPLIT[:COLUMN], e.g. Salesforce/wikitext:wikitext-2-raw-v1:train:text or imdb:train"


def parse_dataset_spec(spec: str) -> DatasetSpec:
    """Parse ``NAME[:CONFIG]:SPLIT[:COLUMN]``; anything else is refused with the expected form.

    Two fields are ``NAME:SPLIT`` and four ``NAME:CONFIG:SPLIT:COLUMN`` (CONFIG
    may be empty: ``NAME::SPLIT:COLUMN``). Three fields are read by which one
    is a split name (``train``, ``validation``, ``test``, ``dev``, their
    ``_suffix`` variants such as ``validation_matched``, with an optional slice
    ``[...]``): ``NAME:SPLIT:COLUMN`` when the second is, ``NAME:CONFIG:SPLIT``
    when the third is; when neither or both are, the spec is ambiguous and
    refused. A ``:`` inside a slice (``train[:1000]``) is part of the split.

    Raises
    ------
    CorpusError
        The spec does not parse; the message gives the expected form.
    """
    def refuse(why):
        return CorpusError(f"dataset spec {spec!r} does not parse ({why}): expected {SPEC_FORM}")

    if not isinstance(spec, str) or not spec.strip():
        raise refuse("it is empty")
    parts, position = [], 0
    while position <= len(spec):  # fields between ':' separators, slices kept whole
        match = _PART.match(spec, position)
        end = match.end() if match else position
        parts.append(spec[position:end])
        if end < len(spec) and spec[end] != ":":
            raise refuse(f"unbalanced brackets at {spec[end:]!r}")
        position = end + 1
    if not 2 <= len(parts) <= 4:
        raise refuse(f"{len(parts)} field{'s' if len(parts) != 1 else ''}")
    if len(parts) == 2:
        name, config, split, column = parts[0], None, parts[1], None
    elif len(parts) == 4:
        name, config, split, column = parts[0], parts[1] or None, parts[2], parts[3]
    else:
        second, third = (bool(_SPLIT.match(p)) for p in parts[1:])
        if second == third:
            which = f"both {parts[1]!r} and {parts[2]!r} are split names" if second else \
                f"neither {parts[1]!r} nor {parts[2]!r} is a split name"
            raise refuse(f"{which}; write all four fields, NAME:CONFIG:SPLIT:COLUMN, CONFIG may be empty")
        name, config, split, column = (parts[0], None, parts[1], parts[2]) if second else (*parts, None)
    if not _NAME.match(name):
        raise refuse(f"NAME {name!r} is no hub id or path")
    if not _ANY_SPLIT.match(split):
        raise refuse(f"SPLIT {split!r} is no split name")
    for what, value in (("CONFIG", config), ("COLUMN", column)):
        if value is not None and not _FIELD.match(value):
            raise refuse(f"{what} {value!r}")
    return DatasetSpec(name, config, split, column)


def load_dataset_corpus(spec) -> Corpus:
    """One column of a dataset split through :func:`datasets.load_dataset` (the hub, with a network).

    Parameters
    ----------
    spec : str or DatasetSpec
        ``NAME[:CONFIG]:SPLIT[:COLUMN]`` (:func:`parse_dataset_spec`); the column defaults to ``text``.

    Returns
    -------
    Corpus
        Examples: the non-empty rows, stripped; running text: all rows joined
        with ``"\\n\\n"`` (as WikiText-2's); ``source``: ``dataset``,
        ``config``, ``split``, ``column``, ``rows`` and ``sha256`` of the running text.
    """
    spec = parse_dataset_spec(spec) if isinstance(spec, str) else spec
    rows = datasets.load_dataset(spec.name, spec.config, split=spec.split)
    column = spec.column or DEFAULT_TEXT_FIELD
    values = _string_column(rows, column, str(spec))
    return _rows_corpus(str(spec), values, {"dataset": spec.name, "config": spec.config, "split": spec.split,
                                            "column": column})


def _string_column(rows, column: str, where: str) -> list[str]:
    if column not in rows.column_names:
        raise CorpusError(f"{where} has no column {column!r}; its columns: {', '.join(rows.column_names)} "
                          "(name one as NAME[:CONFIG]:SPLIT:COLUMN)")
    values = rows[column][:]
    bad = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
    if bad is not None:
        raise CorpusError(f"{where}: row {bad} of column {column!r} is a {type(values[bad]).__name__}, not text")
    return values


def _rows_corpus(name: str, values: list[str], source: dict, *, join: str = JOIN, max_tokens=None) -> Corpus:
    examples = tuple(v.strip() for v in values if v.strip())
    if not examples:
        raise CorpusError(f"{name} holds no text ({len(values)} rows, all empty)")
    text = join.join(values)
    source = {**source, "rows": len(values), "sha256": hashlib.sha256(text.encode()).hexdigest()}
    return Corpus(name, text, examples, source, max_tokens)


def ptb_test() -> Corpus:
    """Penn Treebank test sentences joined with single spaces (SparseGPT's and Wanda's preprocessing).

    Loaded from the hub as ``ptb-text-only/ptb_text_only``, config
    ``penn_treebank``, split ``test``, column ``sentence`` (the namespaced id of
    the old ``ptb_text_only``); when datasets refuses that repository's loading
    script, from its Parquet export (``revision="refs/convert/parquet"``,
    ``data_dir="penn_treebank"``). Needs a network.
    """
    try:
        rows = datasets.load_dataset(PTB_HUB, PTB_CONFIG, split="test")
    except RuntimeError as error:  # "Dataset scripts are no longer supported" (datasets >= 4)
        if "script" not in str(error):
            raise
        rows = datasets.load_dataset(PTB_HUB, revision=PTB_PARQUET, data_dir=PTB_CONFIG, split="test")
    return _rows_corpus("ptb test", _string_column(rows, "sentence", "ptb test"),
                        {"dataset": PTB_HUB, "config": PTB_CONFIG, "split": "test", "column": "sentence",
                         "preprocessing": "sentences joined with single spaces"}, join=" ")


def c4_validation(tokenizer, *, window: int, seed: int = 0) -> Corpus:
    """C4's first English validation shard: documents in seeded order, the first 256 × ``window`` tokens.

    The shard ``en/c4-validation.00000-of-00008.json.gz`` of ``allenai/c4``
    (as SparseGPT and Wanda evaluate), its documents shuffled by
    ``numpy.random.default_rng(seed).permutation`` and joined with single
    spaces; only as many leading documents as give 256 × ``window`` tokens are
    kept, and :attr:`Corpus.max_tokens` caps perplexity there. Needs a network.
    """
    rows = datasets.load_dataset(C4_HUB, data_files={"validation": C4_SHARD}, split="validation")
    docs = _string_column(rows, "text", "c4 validation")
    order = np.random.default_rng(seed).permutation(len(docs))
    need, count = C4_WINDOWS * window, 0
    while True:  # double the documents until their join holds enough tokens: tokenised O(final) in all
        count = min(len(docs), max(2 * count, 64))
        kept = [docs[i] for i in order[:count]]
        if token_ids(tokenizer, " ".join(kept)).numel() >= need or count == len(docs):
            break
    return _rows_corpus("c4 validation", kept,
                        {"dataset": C4_HUB, "data_files": C4_SHARD, "split": "validation", "column": "text",
                         "seed": seed, "documents": count,
                         "preprocessing": f"documents shuffled (seed {seed}), joined with single spaces, "
                                          f"the first {C4_WINDOWS} x {window} tokens"},
                        join=" ", max_tokens=need)


# --------------------------------------------------------------------------- windows

_TOKENS_CACHE: collections.OrderedDict = collections.OrderedDict()
_TOKENS_CACHE_SIZE = 8  # texts; a WikiText-2 test split is ~290k int64 ids (2.3 MB)


def token_ids(tokenizer, text: str) -> torch.Tensor:
    """``text`` tokenised in one call (special tokens as the tokenizer adds them): ids of shape (T,).

    Cached in memory, keyed by the tokenizer's class, ``name_or_path`` and
    vocabulary size and the text's SHA-256, so a split is tokenised once per
    tokenizer and corpus (``statlab compare`` evaluates it many times). A
    tokenizer built in memory (no ``name_or_path``) is not cached. The tensor
    returned is shared: do not modify it.
    """
    name = getattr(tokenizer, "name_or_path", "")
    key = (type(tokenizer).__name__, name, len(tokenizer), hashlib.sha256(text.encode()).hexdigest()) if name else None
    if key in _TOKENS_CACHE:
        _TOKENS_CACHE.move_to_end(key)
        return _TOKENS_CACHE[key]
    ids = tokenizer(text, return_tensors="pt", verbose=False)["input_ids"][0]  # (T,)
    if key is not None:
        _TOKENS_CACHE[key] = ids
        while len(_TOKENS_CACHE) > _TOKENS_CACHE_SIZE:
            _TOKENS_CACHE.popitem(last=False)
    return ids


def text_windows(tokenizer, text: str, *, window: int, max_tokens: int | None = None,
                 n_windows: int | None = None, name: str = "the text") -> torch.Tensor:
    """Non-overlapping token windows of any text for perplexity (DESIGN §4, the WikiText-2 protocol).

    The text is tokenised once (:func:`token_ids`, special tokens as the
    tokenizer adds them) and cut into consecutive ``window``-token windows; the
    ragged tail is dropped. Window ``w`` holds tokens ``[w window, (w + 1) window)``.

    Parameters
    ----------
    tokenizer : transformers tokenizer
    text : str
    window : int
        Tokens per window, >= 2.
    max_tokens : int, optional
        Keep only the first whole windows totalling at most this many tokens.
    n_windows : int, optional
        Keep only the first ``n_windows`` windows; with ``max_tokens`` too, the smaller limit wins.
    name : str
        What the text is, for the error message.

    Returns
    -------
    Tensor of int64, shape (W, window)
        A copy: the cached ids stay untouched.

    Raises
    ------
    ValueError
        If the limits leave no whole window.
    """
    if window < 2:
        raise ValueError(f"window={window}: a perplexity window needs at least 2 tokens")
    ids = token_ids(tokenizer, text)  # (T,)
    count = ids.numel() // window
    if max_tokens is not None:
        count = min(count, max_tokens // window)
    if n_windows is not None:
        count = min(count, n_windows)
    if count < 1:
        raise CorpusError(f"no whole window of {window} tokens: {name} has {ids.numel()} tokens "
                          f"(max_tokens={max_tokens}, n_windows={n_windows}); lower the window or give more text")
    return ids[: count * window].reshape(count, window).clone()  # (W, window)


def sample_windows(pool: torch.Tensor, n_windows: int, *, seed: int = 0, batch_size: int = 8) -> list[dict]:
    """``n_windows`` windows of ``pool`` drawn without replacement, in pool order, as calibration batches.

    The draw is ``numpy.random.default_rng(seed).choice(W, n_windows, replace=False)``, sorted
    (as :func:`statlab.data.calibration_windows` draws WikiText-2 validation windows).

    Parameters
    ----------
    pool : Tensor of int64, shape (W, window)
    n_windows : int, 1 <= n_windows <= W
    seed : int
    batch_size : int

    Returns
    -------
    list of dict
        ``{"input_ids": (B, window)}`` batches, ``B <= batch_size``.
    """
    if not 1 <= n_windows <= pool.shape[0]:
        raise ValueError(f"{n_windows} windows requested from a pool of {pool.shape[0]}")
    picks = np.sort(np.random.default_rng(seed).choice(pool.shape[0], size=n_windows, replace=False))
    chosen = pool[torch.from_numpy(picks)]  # (n_windows, window)
    return [{"input_ids": chunk} for chunk in chosen.split(batch_size)]


def wikitext2_test() -> Corpus:
    """WikiText-2 raw test (offline copy or the hub, :func:`statlab.data.load_task`), rows joined with ``"\\n\\n"``."""
    from statlab.data import load_task

    rows = load_task("wikitext2", "test")["text"][:]
    return _rows_corpus("wikitext2 test", rows, {"dataset": "wikitext2", "split": "test"})


def corpus_for_task(task: str, tokenizer, *, window: int, seed: int = 0) -> Corpus:
    """The perplexity corpus of a decoder task: ``wikitext2``, ``ptb`` or ``c4``."""
    if task == "wikitext2":
        return wikitext2_test()
    if task == "ptb":
        return ptb_test()
    if task == "c4":
        return c4_validation(tokenizer, window=window, seed=seed)
    raise ValueError(f"unknown perplexity corpus {task!r}; known: wikitext2, ptb, c4")
