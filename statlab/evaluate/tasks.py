"""One entry point per question: the metrics of a model on a task, and its costs beside them.

:func:`evaluate_task` scores an encoder (STS-B, or SST-2 / MRPC through a
probe), :func:`task_metrics` adds perplexity for decoders (WikiText-2, PTB,
C4 or any text, :mod:`statlab.corpora`), and :func:`evaluate_model` loads a
model name/path or a saved plan first, on a device and in a dtype (what
``statlab eval`` runs).
"""

from __future__ import annotations

from pathlib import Path

from statlab.calibration import DEFAULT_WINDOW, PERPLEXITY_TASKS, QA_TASKS, cost_seq_len
from statlab.costs import block_macs
from statlab.offload import check_placement, input_device, is_dispatched, streamed
from statlab.plan import PruningPlan

from .decoders import decoder_perplexity
from .efficiency import count_parameters
from .encoders import stsb_spearman
from .heads import HEAD_METRICS, head_kind, head_metrics
from .lmeval import PREFIX as LM_EVAL_PREFIX
from .lmeval import parse_lm_eval_task
from .probe import PROBE_TASKS, Probe, fit_probe, probe_metrics

EVAL_TASKS = ("stsb", "sst2", "mrpc")
DECODER_TASKS = PERPLEXITY_TASKS  # "text": a text file's perplexity (corpus=)


def check_task(model, task: str, name: str | None = None) -> None:
    """Refuse a task the model cannot be scored on, before any work.

    Perplexity (``wikitext2``, ``ptb``, ``c4``, ``text``) needs a causal LM;
    ``stsb``, ``sst2`` and ``mrpc`` score an encoder's embeddings.
    """
    from statlab.models.loading import DECODER_TYPES

    model_type = getattr(model.config, "model_type", None)
    name = name or getattr(model, "name_or_path", None) or model_type
    decoder = model_type in DECODER_TYPES
    if task.startswith(LM_EVAL_PREFIX):
        parse_lm_eval_task(task)  # names well formed; lm-eval itself checks they exist
        if not decoder or head_kind(model) is not None:
            raise ValueError(f"{task} runs lm-evaluation-harness on a causal language model, and {name} is a "
                             f"{type(model).__name__}")
        return
    kind = head_kind(model)
    if kind == "sequence-classification":
        if task not in HEAD_METRICS:
            raise ValueError(f"{name} is a {type(model).__name__}, scored by its own head on a GLUE task "
                             f"({', '.join(HEAD_METRICS)}), not on {task}")
        return
    if kind == "question-answering":
        if task not in QA_TASKS:
            raise ValueError(f"{name} is a question-answering model ({type(model).__name__}), scored by its own "
                             f"head on {' or '.join(QA_TASKS)}, not on {task}")
        return
    if task in QA_TASKS:
        raise ValueError(f"task {task} is scored by a question-answering model's own head, and {name} is a "
                         f"{type(model).__name__}: give a *ForQuestionAnswering checkpoint")
    if task in HEAD_METRICS and task not in EVAL_TASKS:
        raise ValueError(f"task {task} is scored by a fine-tuned task model's own head, and {name} is a bare "
                         f"{model_type} model: give a *ForSequenceClassification checkpoint fine-tuned for {task}")
    if task not in EVAL_TASKS + DECODER_TASKS:
        raise ValueError(f"unknown task {task!r}; statlab evaluates {', '.join(EVAL_TASKS + DECODER_TASKS)}")
    if task in DECODER_TASKS and not decoder:
        raise ValueError(f"task {task} is the perplexity of a causal language model, and {name} is a {model_type} "
                         f"encoder: evaluate it on {', '.join(EVAL_TASKS)}")
    if task in EVAL_TASKS and decoder:
        raise ValueError(f"task {task} scores an encoder's sentence embeddings, and {name} is a {model_type} "
                         f"causal language model: evaluate it on {', '.join(DECODER_TASKS)}")


def evaluate_task(
    model,
    tokenizer,
    task: str,
    *,
    probe: Probe | None = None,
    limit: int | None = None,
    batch_size: int = 64,
    disable_progress: bool | None = None,
) -> dict:
    """Metrics of an encoder on one task: ``stsb``, or ``sst2`` / ``mrpc`` with a probe.

    Parameters
    ----------
    model, tokenizer : transformers encoder and its tokenizer
    task : {"stsb", "sst2", "mrpc"}
    probe : Probe, optional
        Required for ``sst2`` and ``mrpc``; fitted on the dense model.
    limit : int, optional
        Evaluate only ``limit`` dev examples spread evenly over the set.
    batch_size : int
    disable_progress : bool or None

    Returns
    -------
    dict
        ``task`` and the metrics of :func:`stsb_spearman` or :func:`probe_metrics`.
    """
    options = {"limit": limit, "batch_size": batch_size, "disable_progress": disable_progress}
    if task == "stsb":
        return {"task": task, **stsb_spearman(model, tokenizer, **options)}
    if task not in PROBE_TASKS:
        raise ValueError(
            f"unknown task {task!r}; evaluate_task supports {', '.join(EVAL_TASKS)}. For "
            f"WikiText-2 use perplexity(model, statlab.data.token_windows(tokenizer))."
        )
    if probe is None:
        raise ValueError(
            f"task {task!r} needs a probe fitted on the dense model: "
            f"probe = fit_probe(dense_model, tokenizer, {task!r})"
        )
    if probe.task != task:
        raise ValueError(f"the probe was fitted for {probe.task!r}, not {task!r}")
    return {"task": task, **probe_metrics(model, tokenizer, probe, **options)}


def task_metrics(model, tokenizer, task, *, probe=None, limit=None, window=DEFAULT_WINDOW, max_tokens="auto",
                 corpus=None, seed=0, task_dir=None):
    """The metrics of an in-memory model on ``task``.

    Parameters
    ----------
    model, tokenizer : transformers encoder or causal LM and its tokenizer
    task : {"stsb", "sst2", "mrpc", "wikitext2", "ptb", "c4", "text"}
    probe : Probe, optional
        Required for ``sst2`` and ``mrpc``; fitted on the dense model.
    limit : int, optional
        Encoder tasks: evaluate only ``limit`` dev examples spread evenly over the set.
    window, max_tokens
        Perplexity tasks: as in :func:`statlab.evaluate.decoders.decoder_perplexity`.
    corpus : statlab.corpora.Corpus, optional
        ``text``: the text (required); the other perplexity tasks load theirs
        (:func:`statlab.corpora.corpus_for_task`) when it is None.
    seed : int
        ``c4``: the seed of the document order; lm-eval's seed.
    task_dir : str or os.PathLike, optional
        ``lm-eval:...`` tasks: a folder of local task YAMLs searched first.

    Returns
    -------
    dict
        The metrics of :func:`evaluate_task` (without ``task``) or of
        :func:`~statlab.evaluate.decoders.decoder_perplexity`.
    """
    check_task(model, task)
    if task.startswith(LM_EVAL_PREFIX):  # zero-shot tasks through lm-evaluation-harness (the lmeval extra)
        from .lmeval import zero_shot

        return zero_shot(model, tokenizer, parse_lm_eval_task(task), limit=limit, task_dir=task_dir, seed=seed)
    if head_kind(model) == "sequence-classification":
        return head_metrics(model, tokenizer, task, limit=limit)
    if head_kind(model) == "question-answering":
        from .squad import squad_metrics

        return {**squad_metrics(model, tokenizer, version_2=task == "squad_v2", limit=limit), "scored_by": "head"}
    if task in DECODER_TASKS:
        corpus = _perplexity_corpus(task, corpus, tokenizer, window, seed)
        return decoder_perplexity(model, tokenizer, window=window, max_tokens=max_tokens, corpus=corpus)
    metrics = evaluate_task(model, tokenizer, task, probe=probe, limit=limit)
    metrics.pop("task", None)
    return metrics


def evaluate_model(model_or_dir, task, *, limit=None, seed=0, window=DEFAULT_WINDOW, max_tokens="auto",
                   corpus=None, allow_overlap=False, device=None, dtype=None, precision="fp32", task_dir=None,
                   offload=False, device_map=None, offload_folder=None):
    """Metrics and costs of a model name/path or a saved plan directory (what ``statlab eval`` runs).

    A plan directory loads its base model in the dtype the plan was made on,
    takes the probe saved beside the plan (``probe-<task>``) or fits one on the
    dense model, applies the plan, then converts to ``dtype``.

    Parameters
    ----------
    model_or_dir : str or os.PathLike
        A short name, hub id or model directory
        (:func:`statlab.models.loading.load_model`), or a directory holding a
        ``plan.json``.
    task : {"stsb", "sst2", "mrpc", "wikitext2", "ptb", "c4", "text"}
    limit : int, optional
        Encoder tasks: evaluate only ``limit`` dev examples.
    seed : int
        Seed of the probe fitted when none is saved (sst2, mrpc); of C4's document order (c4).
    window, max_tokens
        Perplexity tasks: the first whole ``window``-token windows of the
        corpus up to ``max_tokens`` (``"auto"``: ``CPU_MAX_TOKENS`` on the CPU,
        the whole corpus on a GPU; None: the whole corpus); the metrics say how
        many tokens.
    corpus : statlab.corpora.Corpus, optional
        ``text``: the text to score (e.g. :func:`statlab.corpora.read_file`).
    allow_overlap : bool
        Score a plan on the very file it was calibrated on (same SHA-256);
        refused by default, since calibration text flatters the pruned model.
    device : str or torch.device, optional
        Where the model runs (default: where it loads, the CPU).
    dtype : torch.dtype, optional
        The model's dtype; default fp32, or a plan's own dtype.
    precision : {"fp32", "tf32"}
        fp32 matrix products of the forward passes, or TF32 tensor cores on
        CUDA (:func:`statlab.fast.gram.matmul_precision`; a no-op on the CPU).
    task_dir : str or os.PathLike, optional
        ``lm-eval:TASK,...`` tasks: local task YAMLs (:func:`statlab.evaluate.lmeval.zero_shot`).
    offload : bool
        Keep the blocks in CPU memory and compute each on ``device`` only while
        it runs (:class:`statlab.offload.OffloadedBlocks`).
    device_map, offload_folder
        Place the model (a plan: its base) with accelerate's dispatch
        (:func:`statlab.models.loading.load_model`); a plan is applied block by
        block where each lies. Not with ``device``, ``offload``, or a ``dtype``
        other than the plan's.

    Returns
    -------
    dict
        ``task``, ``metrics`` (of :func:`task_metrics`), ``macs`` and
        ``dense_macs`` (attention + MLP blocks, one ``seq_len``-token
        sequence), ``params``, ``dense_params``, ``seq_len``
        (:func:`statlab.calibration.cost_seq_len`), ``device``, ``dtype``,
        and for perplexity tasks ``corpus`` (its
        :attr:`~statlab.corpora.Corpus.source`: a file's path, bytes and SHA-256).
    """
    import torch

    from statlab.fast.gram import PRECISIONS, matmul_precision
    from statlab.models.loading import load_model  # transformers loads only when a model does

    if precision not in PRECISIONS or precision == "fp64":
        raise ValueError(f"evaluation precision must be fp32 or tf32, got {precision!r}")
    if task == "text":
        _perplexity_corpus(task, corpus, None, window, seed)  # a missing text is refused before any work
    if corpus is not None and task not in DECODER_TASKS:
        raise ValueError(f"a corpus ({corpus.name}) is perplexity text; task {task} does not take one")
    check_placement(offload=offload, device=device, placed=None if device_map is None else "device_map")
    placement = {"device_map": device_map, "offload_folder": offload_folder}
    plan = None
    if (Path(model_or_dir) / "plan.json").exists():  # a damaged plan is reported as one, not as a model
        plan = PruningPlan.load(model_or_dir)
        _check_overlap(plan, corpus, allow_overlap)
        if device_map is not None and dtype is not None and dtype != getattr(torch, plan.meta["dtype"]):
            raise ValueError(f"a dispatched plan runs in its own dtype ({plan.meta['dtype']}); give no dtype, or "
                             "prune in the dtype you want")
        model, tokenizer = load_model(plan.meta["base"], dtype=getattr(torch, plan.meta["dtype"]), quiet=True,
                                      **placement)
    else:
        model, tokenizer = load_model(model_or_dir, dtype=dtype, quiet=True, **placement)
    check_task(model, task, str(model_or_dir))
    if device is not None and not offload:
        model.to(device)
    seq_len = window if task.startswith(LM_EVAL_PREFIX) else cost_seq_len(task, window)  # decoders: one window
    dense_macs, dense_params = block_macs(model, seq_len), count_parameters(model)
    probe = None
    if task in PROBE_TASKS and head_kind(model) is None:
        saved = Path(model_or_dir) / f"probe-{task}"
        probe = Probe.load(saved) if plan is not None and saved.exists() else fit_probe(model, tokenizer, task, seed=seed)
    if plan is not None:
        plan.apply(model)
        if dtype is not None and not is_dispatched(model):
            model.to(dtype)
    if task in DECODER_TASKS:
        corpus = _perplexity_corpus(task, corpus, tokenizer, window, seed)
    with streamed(model, device, offload), matmul_precision(precision, input_device(model)):
        metrics = task_metrics(model, tokenizer, task, probe=probe, limit=limit, window=window,
                               max_tokens=max_tokens, corpus=corpus, seed=seed, task_dir=task_dir)
    first = next(model.parameters())
    where = "dispatched" if is_dispatched(model) else f"{device}, blocks offloaded" if offload else str(first.device)
    result = {"task": task, "scored_by": scored_by(model, task), "metrics": metrics,
              "macs": block_macs(model, seq_len), "dense_macs": dense_macs, "params": count_parameters(model),
              "dense_params": dense_params, "seq_len": seq_len, "device": where,
              "dtype": str(first.dtype).removeprefix("torch.")}
    if corpus is not None:
        result["corpus"] = corpus.source
    return result


def scored_by(model, task: str) -> str:
    """Which route scores ``model`` on ``task``: ``"head"`` (a task model), ``"probe"`` (a frozen linear
    probe on a bare encoder), ``"embeddings"`` (STS-B cosines), ``"perplexity"`` or ``"lm-eval"``."""
    if head_kind(model) is not None:
        return "head"
    if task.startswith(LM_EVAL_PREFIX):
        return "lm-eval"
    return "perplexity" if task in DECODER_TASKS else {"stsb": "embeddings"}.get(task, "probe")


def _perplexity_corpus(task, corpus, tokenizer, window, seed):
    """``corpus``, or the one ``task`` names (:func:`statlab.corpora.corpus_for_task`); ``text`` needs it given."""
    if corpus is not None:
        return corpus
    if task == "text":
        raise ValueError("task 'text' is the perplexity of a text you give: corpus=statlab.corpora.read_file(path)")
    from statlab.corpora import corpus_for_task

    return corpus_for_task(task, tokenizer, window=window, seed=seed)


def _check_overlap(plan, corpus, allow_overlap):
    """Refuse to score a plan on the file it was calibrated on, unless allowed."""
    calibrated = (plan.meta.get("calibration") or {}).get("corpus") or {}
    same = corpus is not None and calibrated.get("sha256") and calibrated["sha256"] == corpus.source.get("sha256")
    if same and not allow_overlap:
        raise ValueError(f"the plan was calibrated on this very text ({calibrated.get('path', corpus.name)}, "
                         f"sha256 {calibrated['sha256'][:12]}...): its perplexity there flatters the pruned model; "
                         "evaluate on other text, or pass --allow-overlap (allow_overlap=True) to score it anyway")
