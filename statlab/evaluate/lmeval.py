"""Zero-shot tasks of lm-evaluation-harness on an in-memory (dense or pruned) causal LM.

The model is wrapped as it is, pruned modules and all, in lm-eval's
``HFLM``; nothing is saved or reloaded. lm-eval is an optional extra
(``pip install 'statlab-prune[lmeval]'``) and loads only when
:func:`zero_shot` runs.

Multiple-choice accuracy, as lm-eval defines it: with context ``c`` and
choices ``a_j`` (each scored as the continuation ``target_delimiter + a_j``),

    ll_j = sum_t log p(a_jt | c, a_j<t)        acc      = [argmax_j ll_j == gold]
                                               acc_norm = [argmax_j ll_j / len(a_j) == gold]

with ``len(a_j)`` the length of the choice in characters, averaged over the
documents; ``*_stderr`` is the sample standard deviation over ``sqrt(n)``.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import math
import random

import numpy as np

from statlab.calibration import LM_EVAL_PREFIX as PREFIX, parse_lm_eval_task  # noqa: F401  (torch-free, for the CLI)

MISSING_EXTRA = "zero-shot tasks need the lmeval extra: pip install 'statlab-prune[lmeval]'"
METRICS = ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")


def zero_shot(model, tokenizer, tasks: list[str], *, limit: int | None = None, batch_size: int = 8,
              num_fewshot: int = 0, task_dir=None, seed: int = 0) -> dict:
    """lm-eval's metrics of an in-memory causal LM on ``tasks``.

    Parameters
    ----------
    model : transformers ``*ForCausalLM`` (llama, mistral, qwen2), dense or pruned
        Evaluated where it lies (its own device and dtype); back in its own
        train/eval mode afterwards.
    tokenizer : transformers tokenizer of ``model``
        Not modified: lm-eval gets a copy (it may set a pad token).
    tasks : list of str
        lm-eval task, group or tag names (``["piqa", "arc_easy"]``; see
        :func:`parse_lm_eval_task`), or names defined by the YAMLs in ``task_dir``.
    limit : int, optional
        Score only the first ``limit`` documents of each task.
    batch_size : int
        Requests per forward pass.
    num_fewshot : int
        In-context examples per prompt (0: zero-shot).
    task_dir : str or os.PathLike, optional
        A directory of task YAMLs (e.g. over local JSON data), searched before
        lm-eval's own tasks; lm-eval's ~15 s scan of its own tasks happens only
        when a name is not found there.
    seed : int
        lm-eval's Python, NumPy, torch and few-shot seeds; the caller's global
        random states are restored afterwards.

    Returns
    -------
    dict
        ``lm_eval_version``, ``num_fewshot``, ``limit`` and ``tasks``:
        ``{name: {"n": documents scored, "acc", "acc_stderr", "acc_norm",
        "acc_norm_stderr"}}`` for every task and group lm-eval reports, each
        metric only where the task computes it (a stderr lm-eval cannot
        estimate, e.g. from one document, is None).

    Raises
    ------
    ModuleNotFoundError
        lm-eval is not installed.
    TypeError
        ``tasks`` is one string rather than a list of names.
    ValueError
        ``model`` is not a causal LM, a task name is unknown (the message lists
        close ones), or ``limit``, ``batch_size`` or ``num_fewshot`` is out of range.
    """
    if isinstance(tasks, str):
        raise TypeError(f"tasks must be a list of task names, not the string {tasks!r}: "
                        f"write [{tasks!r}], or parse_lm_eval_task('{PREFIX}{tasks}')")
    _check_causal_lm(model)
    _check_counts(limit=limit, batch_size=batch_size, num_fewshot=num_fewshot)
    lm_eval, evaluator, hflm_class = _import_lm_eval()
    manager = _task_manager(lm_eval, list(tasks), task_dir)
    from ._common import _eval_mode

    with _eval_mode(model), _global_random_state_kept():  # HFLM calls model.eval() itself
        lm = hflm_class(pretrained=model, tokenizer=copy.deepcopy(tokenizer), backend="causal", batch_size=batch_size)
        results = evaluator.simple_evaluate(
            model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit, task_manager=manager,
            log_samples=False, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    return {"lm_eval_version": lm_eval.__version__, "num_fewshot": num_fewshot, "limit": limit,
            "tasks": _main_metrics(results)}


def _check_causal_lm(model) -> None:
    from statlab.models import DECODER_TYPES

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in DECODER_TYPES or not type(model).__name__.endswith("ForCausalLM"):
        raise ValueError(
            f"lm-eval tasks score a causal language model's next-token log-likelihoods, and this is a "
            f"{type(model).__name__} ({model_type}): give a *ForCausalLM of {', '.join(DECODER_TYPES)}; "
            f"encoders are scored on stsb, sst2, mrpc or their own GLUE/SQuAD head"
        )


def _check_counts(*, limit, batch_size, num_fewshot) -> None:
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit={limit!r}: score at least 1 document per task, or pass None for all")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: give a positive number of requests per forward pass")
    if not isinstance(num_fewshot, int) or num_fewshot < 0:
        raise ValueError(f"num_fewshot={num_fewshot!r}: give 0 (zero-shot) or a positive number of examples")


def _import_lm_eval():
    """``lm_eval``, ``lm_eval.evaluator`` and ``HFLM``, or the install hint (also for a broken install)."""
    try:
        import lm_eval  # the package first: a stale submodule in sys.modules must not hide its absence
        import lm_eval.evaluator as evaluator
        from lm_eval.models.huggingface import HFLM
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(f"{MISSING_EXTRA} (importing lm_eval failed: {err})", name="lm_eval") from err
    return lm_eval, evaluator, HFLM


def _task_manager(lm_eval, names: list[str], task_dir):
    """A TaskManager that knows every name, scanning lm-eval's own tasks only if ``task_dir`` lacks one."""
    from lm_eval.tasks import TaskManager

    if not names:
        raise ValueError(f"no lm-eval task given: name at least one, e.g. {PREFIX}piqa,arc_easy")
    if task_dir is not None:
        local = TaskManager(include_path=str(task_dir), include_defaults=False)
        if set(names) <= set(local.all_tasks):
            return local
    manager = TaskManager(include_path=None if task_dir is None else str(task_dir))
    unknown = [name for name in names if name not in manager.all_tasks]
    if unknown:
        raise ValueError("; ".join(_unknown_task(name, manager.all_tasks, lm_eval.__version__) for name in unknown))
    return manager


def _unknown_task(name: str, known: list[str], version: str) -> str:
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    hint = f"close ones: {', '.join(close)}" if close else "see `lm-eval ls tasks`"
    return f"unknown lm-eval task {name!r} (lm-eval {version} knows {len(known)} tasks, groups and tags; {hint})"


@contextlib.contextmanager
def _global_random_state_kept():
    """simple_evaluate seeds Python's, NumPy's and torch's global generators; give the caller theirs back."""
    import torch

    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng():
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def _main_metrics(results: dict) -> dict:
    """``{task: {"n", "acc", "acc_stderr", ...}}`` from lm-eval's ``{"acc,none": ..., "acc_stderr,none": ...}``."""
    samples = results.get("n-samples", {})
    out = {}
    for task, row in results["results"].items():
        metrics = {"n": samples[task]["effective"]} if task in samples else {}
        for key, value in row.items():
            metric, _, filter_name = key.partition(",")
            if metric in METRICS and filter_name == "none":
                metrics[metric] = _number(value)
        out[task] = metrics
    return out


def _number(value):
    """A float, or None for lm-eval's ``"N/A"`` and non-finite stderrs (JSON has no NaN)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


__all__ = ["MISSING_EXTRA", "parse_lm_eval_task", "zero_shot"]
