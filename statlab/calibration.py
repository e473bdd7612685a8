"""Calibration data for pruning, and the lengths the evaluation protocol measures at.

Which text a task is calibrated on, how much of it, and the sequence length its
MACs are counted at. Nothing here imports torch until a function runs, so the
command line can show these defaults in ``--help`` without loading it.
"""

from __future__ import annotations

# STS-B has no training split offline; calibration comes from another task's
# training sentences: MRPC, measured best on the tune half of STS-B dev (README "Calibration defaults").
DEFAULT_CALIBRATION_SOURCE = {"stsb": "mrpc", "sst2": "sst2", "mrpc": "mrpc", "wikitext2": "wikitext2"}
GLUE_TASKS = ("sst2", "mrpc", "stsb", "qnli", "rte", "qqp", "cola", "mnli")  # tasks of fine-tuned task models
QA_TASKS = ("squad", "squad_v2")  # question-answering task models (SQuAD v1.1, v2.0)
QA_SEQ_LEN = 384  # question + context tokens per window, the SQuAD protocol
# perplexity corpora (statlab.corpora); "text" is a text file's
PERPLEXITY_TASKS = ("wikitext2", "ptb", "c4", "text")
EVAL_SEQ_LEN = 128
DEFAULT_CALIBRATION_SIZE = 512  # sentences, encoder tasks
DEFAULT_CALIBRATION_WINDOWS = 128  # windows, wikitext2
DEFAULT_WINDOW = 512  # tokens per perplexity / calibration window on CPU (2048 in the Llama-2 protocol)
LM_EVAL_PREFIX = "lm-eval:"  # eval --task lm-eval:piqa,arc_easy: zero-shot tasks of lm-evaluation-harness
CPU_MAX_TOKENS = 32768  # perplexity on the CPU: the first whole windows up to this many tokens


def parse_lm_eval_task(text: str) -> list[str]:
    """The task names of the CLI spelling ``lm-eval:piqa,arc_easy`` -> ``["piqa", "arc_easy"]``.

    Raises
    ------
    ValueError
        ``text`` does not start with ``lm-eval:``, names no task, has an empty
        name (``lm-eval:piqa,,arc_easy``) or names a task twice.
    """
    if not text.startswith(LM_EVAL_PREFIX):
        raise ValueError(f"{text!r} is not an lm-eval task list: write {LM_EVAL_PREFIX}TASK[,TASK...], "
                         f"e.g. {LM_EVAL_PREFIX}piqa,arc_easy")
    names = [name.strip() for name in text[len(LM_EVAL_PREFIX):].split(",")]
    if names == [""]:
        raise ValueError(f"{text!r} names no task: write {LM_EVAL_PREFIX}TASK[,TASK...], "
                         f"e.g. {LM_EVAL_PREFIX}piqa,arc_easy")
    if "" in names:
        raise ValueError(f"{text!r} has an empty task name: separate names by single commas, no trailing comma")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{text!r} names {', '.join(repeated)} more than once")
    return names


def calibration_batches(tokenizer, task, *, size=None, source=None, seed=0, max_length=128, batch_size=64,
                        window=DEFAULT_WINDOW, task_model=False, corpus=None):
    """Tokenised calibration batches for ``task`` and a description of them.

    Parameters
    ----------
    tokenizer : transformers tokenizer
    task : {"stsb", "sst2", "mrpc", "wikitext2"}
        Encoder tasks: ``size`` sentences of ``source``'s training split, sorted
        by length and padded per batch. ``wikitext2`` (decoders): ``size``
        windows of ``window`` tokens from WikiText-2 validation.
    size : int, optional
        Sentences (default :data:`DEFAULT_CALIBRATION_SIZE`) or, for
        ``wikitext2``, windows (default :data:`DEFAULT_CALIBRATION_WINDOWS`).
    source : {"sst2", "mrpc", "wikitext2"}, optional
        Encoder tasks: where the sentences come from; default
        :data:`DEFAULT_CALIBRATION_SOURCE` of the task.
    seed : int
        Seed of the sample.
    max_length : int
        Encoder tasks: tokens per sentence at most (longer ones are truncated).
    batch_size : int
        Encoder tasks: sentences per batch.
    window : int
        ``wikitext2``: tokens per window.
    task_model : bool
        The model is fine-tuned for ``task`` (a head scores it): calibrate as
        the paper does, on ``size`` examples of the task's own training split
        read as the model reads them (pairs encoded together), with their
        ``labels`` in the batches for the methods that use them
        (:func:`statlab.data.task_calibration_batches`). ``source`` must then
        be the task or None.
    corpus : statlab.corpora.Corpus, optional
        Calibrate on this text instead (a file, a dataset split: see
        :mod:`statlab.corpora`), never together with ``source``. Encoder
        tasks: ``size`` of its distinct examples, drawn as the task's sentences
        are; ``wikitext2``: its running text cut into ``window``-token windows,
        ``size`` of them drawn as WikiText-2 validation's are
        (:func:`statlab.corpora.sample_windows`). A ``size`` left at its
        default takes all the corpus has when it holds fewer; one given
        explicitly must be there.

    Returns
    -------
    batches : list of dict of Tensor
        Encoder tasks: ``input_ids`` and ``attention_mask`` of shape (B, T),
        ``T <= max_length``. ``wikitext2``: ``input_ids`` of shape (B, window).
    description : dict
        ``source``, ``examples``, ``tokens`` (non-padding tokens in all
        batches), ``seed`` and ``max_length`` or ``window``; with ``corpus``,
        also ``corpus`` (its :attr:`~statlab.corpora.Corpus.source`: a file's
        path, bytes and SHA-256). Recorded in the plan's metadata.
    """
    if task not in DEFAULT_CALIBRATION_SOURCE and not task_model:
        raise ValueError(f"unknown task {task!r}; calibration is defined for {', '.join(sorted(DEFAULT_CALIBRATION_SOURCE))}")
    for name, value, low in (("size", size, 1), ("window", window, 2), ("max_length", max_length, 1),
                             ("batch_size", batch_size, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ValueError(f"calibration {name} must be an integer >= {low} (None for the default), got {value!r}")
    from statlab.data import calibration_texts, calibration_windows, tokenize_batches

    if corpus is not None:
        if source is not None:
            raise ValueError(f"calibrate on a corpus ({corpus.name}) or on a source ({source}), not both")
        return _corpus_batches(tokenizer, task, corpus, size=size, seed=seed, max_length=max_length,
                               batch_size=batch_size, window=window)
    if task == "wikitext2":
        size = DEFAULT_CALIBRATION_WINDOWS if size is None else size
        batches = calibration_windows(tokenizer, size, window=window, seed=seed)
        return batches, {"source": "wikitext2 validation windows", "examples": size, "window": window,
                         "tokens": size * window, "seed": seed}
    size = DEFAULT_CALIBRATION_SIZE if size is None else size
    if task_model:
        if source not in (None, task):
            raise ValueError(f"a task model fine-tuned for {task} calibrates on {task}'s training examples, not "
                             f"{source}'s")
        if task in QA_TASKS:
            return _squad_calibration(tokenizer, task, size, seed=seed, batch_size=batch_size)
        from statlab.data import task_calibration_batches

        batches = task_calibration_batches(tokenizer, task, size, seed=seed, labels=True, max_length=max_length,
                                           batch_size=batch_size)
        tokens = _real_tokens(batches)
        return batches, {"source": f"{task} train examples", "examples": size, "tokens": tokens,
                         "max_length": max_length, "seed": seed}
    source = source or DEFAULT_CALIBRATION_SOURCE[task]
    texts = calibration_texts(source, size, seed=seed)
    # similar lengths in a batch waste less on padding
    texts = sorted(texts, key=len)
    batches = tokenize_batches(tokenizer, texts, max_length=max_length, batch_size=batch_size)
    tokens = _real_tokens(batches)
    return batches, {"source": f"{source} train" if source != "wikitext2" else "wikitext2 validation",
                     "examples": size, "tokens": tokens, "max_length": max_length, "seed": seed}


def _squad_calibration(tokenizer, task, size, *, seed, batch_size):
    """``size`` SQuAD training questions with their contexts, one window each (the first)."""
    import numpy as np

    from statlab.data import tokenize_batches
    from statlab.evaluate.squad import load_squad

    rows = load_squad("train", version_2=task == "squad_v2")
    if not 1 <= size <= len(rows):
        raise ValueError(f"{size} calibration questions requested from {task} train, which has {len(rows)}")
    picks = np.sort(np.random.default_rng(seed).choice(len(rows), size=size, replace=False))
    chosen = rows.select(picks)
    pairs = sorted(zip(chosen["question"][:], chosen["context"][:]), key=lambda pair: len(pair[1]))
    batches = tokenize_batches(tokenizer, pairs, max_length=QA_SEQ_LEN, batch_size=batch_size)
    tokens = _real_tokens(batches)
    return batches, {"source": f"{task} train questions", "examples": size, "tokens": tokens,
                     "max_length": QA_SEQ_LEN, "seed": seed}


def _corpus_batches(tokenizer, task, corpus, *, size, seed, max_length, batch_size, window):
    """:func:`calibration_batches` from a :class:`statlab.corpora.Corpus`."""
    import numpy as np

    from statlab.corpora import sample_windows, text_windows
    from statlab.data import tokenize_batches

    decoder = task == "wikitext2"
    if decoder:
        pool = text_windows(tokenizer, corpus.text, window=window, name=corpus.name)  # (W, window)
        available, unit = pool.shape[0], f"windows of {window} tokens"
    else:
        pool = list(dict.fromkeys(corpus.examples))  # distinct examples, in order
        available, unit = len(pool), "distinct examples"
    default = DEFAULT_CALIBRATION_WINDOWS if decoder else DEFAULT_CALIBRATION_SIZE
    if size is not None and size > available:
        raise ValueError(f"{size} calibration {unit} requested; {corpus.name} holds {available}: ask for fewer"
                         + (" or shorter windows" if decoder else ""))
    size = min(default, available) if size is None else size
    described = {"source": f"{corpus.name} windows" if decoder else corpus.name, "examples": size, "seed": seed,
                 "corpus": corpus.source}
    if decoder:
        batches = sample_windows(pool, size, seed=seed)
        return batches, {**described, "window": window, "tokens": size * window}
    picks = np.random.default_rng(seed).choice(available, size=size, replace=False)  # as calibration_texts draws
    texts = sorted((pool[i] for i in picks), key=len)  # similar lengths in a batch waste less on padding
    batches = tokenize_batches(tokenizer, texts, max_length=max_length, batch_size=batch_size)
    tokens = _real_tokens(batches)
    return batches, {**described, "tokens": tokens, "max_length": max_length}


def _real_tokens(batches) -> int:
    """Non-padding tokens of tokenised batches (their ``attention_mask``)."""
    return sum(int(b["attention_mask"].sum()) for b in batches)


def cost_seq_len(task, window=DEFAULT_WINDOW):
    """The reference length of the MAC model.

    Parameters
    ----------
    task : {"stsb", "sst2", "mrpc", "wikitext2", "ptb", "c4", "text"}
    window : int
        The perplexity window of the decoder tasks (:data:`PERPLEXITY_TASKS`).

    Returns
    -------
    int
        ``window`` for a perplexity task, else :data:`EVAL_SEQ_LEN`.
    """
    return window if task in PERPLEXITY_TASKS else QA_SEQ_LEN if task in QA_TASKS else EVAL_SEQ_LEN
