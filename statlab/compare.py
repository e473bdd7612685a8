"""One harness for every method: same model, calibration and budgets; a table, JSON and a plot.

``statlab compare --model M --task T --methods stat,goa,... --budgets 0.8,0.6,0.5``
prunes a fresh copy of the dense model for every (method, MAC budget), evaluates
it on ``task`` and times the prune. Encoder tasks use one probe fitted on the
dense model (sst2, mrpc); ``wikitext2`` reports perplexity on the first test
windows (the token count is in every row).
"""

from __future__ import annotations

import copy
import time

from tqdm import tqdm

# the metric each task is judged by, and whether larger is better
HEADLINE = {"stsb": ("spearman", True), "sst2": ("accuracy", True), "mrpc": ("f1", True),
            "wikitext2": ("perplexity", False), "qnli": ("accuracy", True), "rte": ("accuracy", True),
            "mnli": ("accuracy", True), "qqp": ("f1", True), "cola": ("matthews", True), "squad": ("f1", True),
            "squad_v2": ("f1", True)}


def compare(model_name, task, methods, budgets, *, calibration_size=None, seed=0, window=512,
            max_tokens="auto", limit=None, checkpoint=None, say=print, corpus=None, device=None, dtype=None,
            precision="fp64", offload=False) -> dict:
    """Prune ``model_name`` with every method at every MAC budget; evaluate each on ``task``.

    Parameters
    ----------
    model_name : str
        Short name, hub id or path (:func:`statlab.models.loading.load_model`).
    task : {"stsb", "sst2", "mrpc", "wikitext2"}
    methods : list of str or PruningMethod
        Names in :data:`statlab.methods.METHODS`, or configured instances
        (e.g. ``Goa(refit_inputs=True)``); each is listed under its
        ``label`` and, when a name, pruned with this call's ``seed``.
    budgets : list of float
        MAC fractions kept, in (0, 1].
    checkpoint : path, optional
        A JSON file rewritten (atomically) after every run. When it exists and
        holds a comparison with the same model, task, calibration and
        evaluation settings, its finished runs are kept and not repeated: an
        interrupted comparison resumes where it stopped.
    corpus : statlab.corpora.Corpus, optional
        Calibrate on this text (a file, a dataset split) instead of the task's
        default source (:func:`statlab.calibration.calibration_batches`).
    device : str or torch.device, optional
        Where the models run (default the CPU, where they load).
    dtype : torch.dtype, optional
        The models' parameter dtype (default fp32).
    precision : {"fp64", "fp32", "tf32"}
        The Grams' accumulation (:func:`statlab.prune`).
    offload : bool
        Keep every model's blocks in CPU memory and compute each on ``device``
        only while it runs, in the prunes and the evaluations (:mod:`statlab.offload`).

    Returns
    -------
    dict
        ``{"model", "task", "calibration", "dense": {...}, "results": [{"method", "budget", "metrics",
        "macs", "params", "prune_seconds", "kept"}]}``.
    """
    import statlab
    from statlab.calibration import calibration_batches, cost_seq_len
    from statlab.costs import block_macs
    from statlab.evaluate import check_task, count_parameters, task_metrics
    from statlab.evaluate.heads import head_kind
    from statlab.evaluate.tasks import scored_by
    from statlab.methods import METHODS, PruningMethod
    from statlab.models.loading import load_model
    from statlab.offload import check_placement, streamed

    unknown = [m for m in methods if not isinstance(m, PruningMethod) and m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    by_label = {(m.label if isinstance(m, PruningMethod) else m): m for m in methods}
    if len(by_label) != len(methods):
        raise ValueError(f"two methods share a label: {[getattr(m, 'label', m) for m in methods]}")
    bad = [b for b in budgets if not 0 < b <= 1]
    if bad:
        raise ValueError(f"MAC budgets must lie in (0, 1], got {bad}")
    check_placement(offload=offload, device=device)
    saved = _read_checkpoint(checkpoint)  # a file that is no checkpoint is refused before any work
    dense, tokenizer = load_model(model_name, quiet=True, dtype=dtype)
    if device is not None and not offload:
        dense.to(device)
    check_task(dense, task, model_name)
    seq_len = cost_seq_len(task, window)
    task_model = head_kind(dense) is not None  # scored by its own head, calibrated on its task's training examples
    batches, calib = calibration_batches(tokenizer, task, size=calibration_size, seed=seed, window=window,
                                         task_model=task_model, corpus=corpus)
    probe = None
    if task in ("sst2", "mrpc") and not task_model:
        from statlab.evaluate import fit_probe

        probe = fit_probe(dense, tokenizer, task, seed=seed)

    def measure(model):
        with streamed(model, device, offload):
            metrics = task_metrics(model, tokenizer, task, probe=probe, limit=limit, window=window,
                                   max_tokens=max_tokens)
        return {"metrics": metrics,
                "macs": block_macs(model, seq_len), "params": count_parameters(model)}

    settings = {"model": model_name, "task": task, "scored_by": scored_by(dense, task), "calibration": calib,
                "seq_len": seq_len,
                "evaluation": {"limit": limit, "window": window, "max_tokens": max_tokens}}
    settings.update({"dtype": str(next(dense.parameters()).dtype).removeprefix("torch."), "precision": precision})
    result = _resumed(saved, checkpoint, settings, say)
    if result is None:
        say(f"calibration: {calib['examples']} {calib['source']} ({calib['tokens']} tokens); evaluating dense")
        result = {**settings, "dense": measure(dense), "results": []}
        save(result, checkpoint)
    done = {(r["method"], r["budget"]) for r in result["results"]}
    runs = [(m, b) for m in by_label for b in budgets if (m, b) not in done]
    for method, budget in tqdm(runs, desc="compare", disable=None):
        model = copy.deepcopy(dense)
        start = time.perf_counter()
        plan = statlab.prune(model, batches, mac_fraction=budget, method=by_label[method], seed=seed,
                             seq_len=seq_len, base=model_name, precision=precision, offload=offload,
                             device=device if offload else None)
        seconds = time.perf_counter() - start
        row = {"method": method, "budget": budget, **measure(model), "prune_seconds": round(seconds, 2),
               "kept": plan.kept_fraction()}
        result["results"].append(row)
        save(result, checkpoint)
        del model
    order = {run: i for i, run in enumerate((m, b) for m in by_label for b in budgets)}
    result["results"].sort(key=lambda r: order.get((r["method"], r["budget"]), len(order)))  # as requested
    return result


def _read_checkpoint(checkpoint):
    """The comparison saved at ``checkpoint``, or None when there is no file yet.

    A file there that is not a comparison is refused, never overwritten.
    """
    import json
    from pathlib import Path

    if checkpoint is None or not Path(checkpoint).exists():
        return None
    path = Path(checkpoint)
    if not path.is_file():
        raise ValueError(f"--checkpoint {checkpoint} is a directory; give a JSON file")
    try:
        saved = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        saved = None
    if not isinstance(saved, dict) or not isinstance(saved.get("results"), list) or "dense" not in saved:
        raise ValueError(f"{checkpoint} exists and is not a statlab comparison checkpoint; statlab will not "
                         "overwrite it: remove it or choose another file")
    return saved


_SETTINGS_BEFORE = {"dtype": "float32", "precision": "fp64"}


def _resumed(saved, checkpoint, settings, say):
    """``saved`` (the checkpoint's comparison) when it matches ``settings``; None when there is none."""
    import json

    if saved is None:
        return None
    def recorded(key):  # a checkpoint from before dtype and precision were settings ran at their defaults
        return saved.get(key, _SETTINGS_BEFORE.get(key))

    differ = [k for k in settings if json.dumps(recorded(k), sort_keys=True) != json.dumps(settings[k], sort_keys=True)]
    if differ:
        raise ValueError(f"{checkpoint} holds another comparison (different {', '.join(differ)}); "
                         "remove it or choose another file")
    say(f"resuming {checkpoint}: {len(saved['results'])} runs done")
    return saved


def save(result, checkpoint):
    """Write ``result`` to ``checkpoint`` atomically (nothing when it is None)."""
    if checkpoint is None:
        return
    import json

    from statlab.files import atomic_write

    atomic_write(checkpoint, json.dumps(result, indent=1))


def table(result, metric=None) -> str:
    """A fixed-width table of a :func:`compare` result: one row per budget, one column per method.

    ``metric``: a key of the metrics to show instead of the task's headline
    (e.g. MRPC's ``accuracy`` beside its F1); higher is better for all but perplexity.
    """
    key, larger = HEADLINE[result["task"]]
    if metric is not None:
        if metric not in result["dense"]["metrics"]:
            raise ValueError(f"no metric {metric!r} in this comparison; it has {sorted(result['dense']['metrics'])}")
        key, larger = metric, metric != "perplexity"
    methods = list(dict.fromkeys(r["method"] for r in result["results"]))
    budgets = sorted({r["budget"] for r in result["results"]}, reverse=True)
    cell = {(r["method"], r["budget"]): r for r in result["results"]}
    head = f"{'MACs kept':>9} | " + " | ".join(f"{m:>16}" for m in methods)
    lines = [f"{result['model']} on {result['task']}: {key} ({'higher' if larger else 'lower'} is better); "
             f"dense {result['dense']['metrics'][key]:.4f}", head, "-" * len(head)]
    for b in budgets:
        row = []
        for m in methods:
            r = cell.get((m, b))
            if r is None:
                row.append(f"{'':>16}")
                continue
            v = r["metrics"][key]
            row.append(f"{f'{v:.4f}' if abs(v) < 1e4 else f'{v:.2e}':>9} ({r['prune_seconds']:>4.0f}s)")
        lines.append(f"{b:>9.2f} | " + " | ".join(row))
    return "\n".join(lines)


def draw(result, ax):
    """Draw a :func:`compare` result on ``ax``: the metric against the MAC budget, one line per method.

    The headline metric of the task (log scale for perplexity) beside the dense
    model's, by :func:`statlab.plots.draw_metric_vs_budget`.
    """
    from statlab.plots import draw_metric_vs_budget

    key, larger = HEADLINE[result["task"]]
    return draw_metric_vs_budget(
        ax, result["results"], key, dense=result["dense"]["metrics"][key], log=not larger,
        xlabel="fraction of block MACs kept", ylabel=f"{result['task']} {key}",
        title=f"{result['model']}: {result['calibration']['tokens']} calibration tokens", legend_fontsize=8)


def plot(result, path):
    """:func:`draw` into a new figure, saved atomically as PNG."""
    from statlab.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    draw(result, ax)
    save_figure(fig, path)
    plt.close(fig)
    return path
