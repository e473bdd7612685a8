"""The ``statlab`` command line: ``prune``, ``eval``, ``compare``, ``finetune``, ``demo``, ``id-demo``.

Every command takes ``--json`` for one machine-readable object on stdout (the
human-readable report then goes to stderr) and shows tqdm bars on long steps.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import sys
import time
import traceback
from pathlib import Path

from statlab.calibration import (
    CPU_MAX_TOKENS,
    DEFAULT_CALIBRATION_SIZE,
    DEFAULT_CALIBRATION_SOURCE,
    DEFAULT_CALIBRATION_WINDOWS,
    DEFAULT_WINDOW,
    EVAL_SEQ_LEN,  # noqa: F401 (re-exported for code written against statlab.cli)
    GLUE_TASKS,
    LM_EVAL_PREFIX,
    QA_TASKS,
    calibration_batches,
    cost_seq_len,
    parse_lm_eval_task,
)

_TASKS = sorted(set(DEFAULT_CALIBRATION_SOURCE) | set(GLUE_TASKS) | set(QA_TASKS))
# the names in statlab.methods.METHODS, spelled out so that `--help` need not import torch
METHOD_NAMES = ("stat", "goa", "slimllm", "kwon", "flap", "activation", "magnitude", "random")
DTYPES = ("float32", "bfloat16", "float16")
GRAM_PRECISIONS = ("fp64", "fp32", "tf32")  # statlab.fast.gram.PRECISIONS
ATTENTION_UNITS = ("groups", "heads")  # statlab.models.ATTENTION_UNITS
ORDERS = ("joint", "neurons first")  # statlab.methods.stat.ORDERS


def _report(args):
    """Where human-readable lines go: stdout, or stderr when stdout carries JSON."""
    stream = sys.stderr if getattr(args, "json", False) else sys.stdout
    return lambda *parts: print(*parts, file=stream, flush=True)


def run_prune(args) -> dict:
    import statlab
    from statlab.models.loading import load_model
    from statlab.plots import plot_plan

    from statlab.plan import check_output_dir

    say = _report(args)
    device, dtype = _hardware(args)  # a machine without the device is told before any work
    check_output_dir(args.out)  # before any work: a bad --out must not cost a prune
    method, ridge = statlab.methods.method_and_ridge(args.method, args.ridge, seed=args.seed,  # stat only
                                                     attention_units=args.attention_units, order=args.order,
                                                     keep_modules=args.keep_modules)
    corpus = _calibration_corpus(args)  # a bad file is refused before the model loads
    from statlab.evaluate import check_task
    from statlab.evaluate.heads import head_kind

    model, tokenizer = load_model(args.model, dtype=dtype, quiet=True, **_placement(args))
    if args.device_map is None and not args.offload:
        model.to(device)
    task_model = head_kind(model) is not None  # its own head scores it; it calibrates on its task's examples
    if task_model or args.task in ("sst2", "mrpc"):  # the probe fitted here needs an encoder
        check_task(model, args.task, args.model)
    batches, calib = calibration_batches(tokenizer, args.task, size=args.calibration_size,
                                         source=args.calibration_source, seed=args.seed, window=args.window,
                                         task_model=task_model, corpus=corpus)
    n_units = max(b.mlp_units for b in statlab.models.get_adapter(model).blocks(model))
    say(f"calibration: {calib['examples']} {calib['source']} examples, {calib['tokens']} tokens "
        f"({calib['tokens'] / n_units:.1f} per MLP neuron)")
    probe = None
    if args.task in ("sst2", "mrpc") and not task_model:
        from statlab.evaluate import fit_probe

        probe = fit_probe(model, tokenizer, args.task, seed=args.seed)
    start = time.perf_counter()
    plan = statlab.prune(model, batches, mac_fraction=args.mac_fraction, sparsity=args.sparsity,
                         backend=args.backend, method=method, seed=args.seed, propagate=not args.one_pass,
                         ridge=ridge, seq_len=cost_seq_len(args.task, args.window),
                         precision=args.precision, offload=args.offload, device=device if args.offload else None,
                         base=model.name_or_path)  # absolute for a local model: the plan reloads from anywhere
    seconds = time.perf_counter() - start
    plan.meta["calibration"].update(calib)
    plan.save(args.out)
    if probe is not None:
        probe.save(Path(args.out) / f"probe-{args.task}")
    plot = Path(args.out) / "plan.png"
    plot_plan(plan, plot, title=f"statlab prune --model {args.model} --task {args.task} ({args.method}, {plan.meta['budget']})")
    kept = plan.kept_fraction()
    where = ("dispatched by accelerate" if "device_map" in plan.meta else
             f"{device}, blocks offloaded" if args.offload else str(device))
    say(f"pruned {args.model} ({plan.meta['dtype']} on {where}, {args.precision} Grams) with {args.method} in "
        f"{seconds:.1f} s: {kept['heads']:.0%} of heads, {kept['neurons']:.0%} of neurons kept; plan in {args.out}, "
        f"plot {plot}")
    return {"out": str(args.out), "prune_seconds": seconds, "kept": kept, "budget": plan.meta["budget"],
            "method": args.method, "calibration": calib, "device": where, "dtype": plan.meta["dtype"],
            "precision": args.precision}


def resolve_device(name: str):
    """The :class:`torch.device` that ``--device name`` means on this machine.

    ``auto`` is ``cuda`` where :func:`torch.cuda.is_available`, else ``cpu``.
    ``cuda`` and ``cuda:N`` need CUDA and, for ``N``, that many devices; a
    clear :class:`ValueError` otherwise.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine (torch.cuda.is_available() is "
                         "False); use --device cpu, or --device auto for a GPU only where there is one")
    count, index = torch.cuda.device_count(), int(name.partition(":")[2] or 0)
    if index >= count:
        raise ValueError(f"--device {name}: this machine has {count} CUDA device{'s' if count != 1 else ''} "
                         f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''})")
    return torch.device(name)


def _hardware(args):
    """``(device, dtype)`` of ``--device`` and ``--dtype`` (dtype None where not given); the placement flags checked."""
    import torch

    from statlab.models.loading import check_device_map

    device_map = getattr(args, "device_map", None)
    if device_map is not None:
        if args.device is not None or args.offload:
            raise ValueError("--device-map places the model itself: give neither --device nor --offload with it")
        check_device_map(device_map)
    elif getattr(args, "offload_folder", None):
        raise ValueError("--offload-folder is where --device-map puts blocks mapped to disk; give a --device-map")
    return resolve_device(args.device or "cpu"), None if args.dtype is None else getattr(torch, args.dtype)


def _placement(args) -> dict:
    """``load_model``'s placement options from ``--device-map`` and ``--offload-folder``."""
    return {"device_map": args.device_map, "offload_folder": args.offload_folder}


def _calibration_corpus(args):
    """The text of ``--calibration-file`` (with ``--text-field``) or ``--calibration-dataset``, or None."""
    from statlab import corpora

    if args.text_field and not args.calibration_file:
        raise ValueError("--text-field names the field of a --calibration-file .jsonl; a --calibration-dataset "
                         "names its column as NAME[:CONFIG]:SPLIT:COLUMN")
    if args.calibration_file:
        return corpora.read_file(args.calibration_file, text_field=args.text_field)
    if args.calibration_dataset:
        return corpora.load_dataset_corpus(args.calibration_dataset)
    return None


def run_eval(args) -> dict:
    from statlab import corpora
    from statlab.evaluate import evaluate_model

    say = _report(args)
    device, dtype = _hardware(args)
    if args.text_field and not args.text_file:
        raise ValueError("--text-field names the field of a --text-file .jsonl")
    corpus = corpora.read_file(args.text_file, text_field=args.text_field) if args.text_file else None
    task = "text" if corpus is not None else args.task
    result = evaluate_model(args.model, task, limit=args.limit, seed=args.seed, window=args.window,
                            max_tokens=args.max_tokens, corpus=corpus, allow_overlap=args.allow_overlap,
                            device=None if args.device_map else device, dtype=dtype, precision=args.precision,
                            task_dir=args.task_dir, offload=args.offload, **_placement(args))
    shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {json.dumps(v, default=str)}"
                      if isinstance(v, dict) else f"{k} {v}" for k, v in result["metrics"].items())
    name = args.text_file or args.task
    say(f"{args.model} ({result['dtype']} on {result['device']}) on {name}: {shown}")
    if "perplexity" in result["metrics"] and result["metrics"]["max_tokens"] is not None:
        say(f"(first {result['metrics']['tokens']} predicted tokens of {name}: --max-tokens "
            f"{result['metrics']['max_tokens']}; --max-tokens 0 evaluates all of it)")
    say(f"MACs per {result['seq_len']}-token sequence (attention + MLP blocks): {result['macs'] / 1e6:.1f} M of "
        f"{result['dense_macs'] / 1e6:.1f} M dense ({result['macs'] / result['dense_macs']:.1%}); "
        f"parameters {result['params'] / 1e6:.2f} M of {result['dense_params'] / 1e6:.2f} M")
    return result


def run_compare(args) -> dict:
    from statlab import compare

    say = _report(args)
    device, dtype = _hardware(args)
    if args.device_map is not None:
        raise ValueError("compare copies the dense model for every run and takes no --device-map; use --offload, "
                         "or prune and eval with --device-map")
    if args.plot and Path(args.plot).is_dir():
        raise ValueError(f"--plot {args.plot} is a directory; give the PNG file to write")
    result = compare.compare(args.model, args.task, args.methods, args.budgets,
                             calibration_size=args.calibration_size, seed=args.seed, window=args.window,
                             max_tokens=args.max_tokens, limit=args.limit, checkpoint=args.checkpoint, say=say,
                             corpus=_calibration_corpus(args), device=device, dtype=dtype, precision=args.precision,
                             offload=args.offload)
    result["command"] = "statlab " + shlex.join(args.argv)
    if args.checkpoint:
        compare.save(result, args.checkpoint)
    say(compare.table(result))
    if args.plot:
        say(f"plot: {compare.plot(result, args.plot)}")
    return result


def run_demo(args) -> dict:
    from statlab import demo

    return demo.run(mac_fraction=args.mac_fraction, calibration_size=args.calibration_size, out=args.out,
                    say=_report(args))


def run_finetune(args) -> dict:
    from statlab.finetune import finetune

    say = _report(args)
    say(f"fine-tuning {args.model} on {args.task} for {args.steps or 'the default number of'} steps (seed {args.seed})")
    result = finetune(args.model, args.task, args.out, steps=args.steps, seed=args.seed,
                      learning_rate=args.learning_rate, batch_size=args.batch_size)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in result.dev.items() if isinstance(v, float))
    say(f"trained in {result.train_seconds:.0f} s on {result.train_examples} examples; dev ({result.dev['n']} "
        f"examples, its own head): {shown}; model in {result.out}")
    return {"out": str(result.out), "train_seconds": result.train_seconds, "train_examples": result.train_examples,
            "steps": result.settings.steps, "dev": result.dev}


def run_id_demo(args) -> dict:
    from statlab import id_demo

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a file; id-demo writes its figures into a directory")
    result = id_demo.run(sentences=args.sentences, seed=args.seed, out=args.out, say=_report(args))
    return {k: v for k, v in result.items() if k != "table"}


def _bounded(cast, name, *, low=None, high=None, low_open=False, high_open=False):
    """An argparse type: ``cast`` the text; refuse non-finite values and values outside the interval.

    ``name`` starts the message (argparse puts the option before it); empty for none.
    """
    name = f"{name} " if name else ""
    interval = (("(" if low_open else "[") + ("-inf" if low is None else f"{low}") + ", "
                + ("inf" if high is None else f"{high}") + (")" if high_open or high is None else "]"))

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name}must be {'an integer' if cast is int else 'a number'} in {interval}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{name}must be a finite number in {interval}, got {text!r}")
        below = low is not None and (value < low or (low_open and value == low))
        above = high is not None and (value > high or (high_open and value == high))
        if below or above:
            raise argparse.ArgumentTypeError(f"{name}must lie in {interval}, got {text}")
        return value

    return parse


_fraction = _bounded(float, "mac_fraction", low=0, high=1, low_open=True)  # MACs kept
_sparsity = _bounded(float, "sparsity", low=0, high=1, high_open=True)  # parameters removed
_count = _bounded(int, "", low=1)
_seed = _bounded(int, "", low=0)
_window = _bounded(int, "", low=2)  # a window predicts window - 1 tokens
_ridge_value = _bounded(float, "", low=0)


def _ridge(text: str):
    """``--ridge``: a relative ridge >= 0, or ``gcv`` (STAT's per-module choice by generalised cross-validation)."""
    return "gcv" if text.strip().lower() == "gcv" else _ridge_value(text)


def _items(text: str, what: str) -> list[str]:
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}")
    if len(set(items)) != len(items):
        raise argparse.ArgumentTypeError(f"{what} repeat in {text!r}")
    return items


def _methods(text: str) -> list[str]:
    """``--methods``: distinct names of :data:`METHOD_NAMES`, comma-separated."""
    names = _items(text, "method names")
    unknown = [n for n in names if n not in METHOD_NAMES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown methods {unknown}; known: {', '.join(METHOD_NAMES)}")
    return names


def _budgets(text: str) -> list[float]:
    """``--budgets``: distinct MAC fractions in (0, 1], comma-separated."""
    try:
        values = [float(item) for item in _items(text, "MAC fractions")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"MAC budgets must be numbers in (0, 1], got {text!r}") from None
    bad = [v for v in values if not 0 < v <= 1]  # NaN fails too
    if bad:
        raise argparse.ArgumentTypeError(f"MAC budgets must lie in (0, 1], got {bad}")
    return values


def _dataset_spec(text: str) -> str:
    """``--calibration-dataset``: a ``NAME[:CONFIG]:SPLIT[:COLUMN]`` that parses (kept as given)."""
    from statlab.corpora import CorpusError, parse_dataset_spec

    try:
        parse_dataset_spec(text)
    except CorpusError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _add_calibration_text(parser, *, exclusive_with_source: bool):
    """``--calibration-file``, ``--calibration-dataset``, ``--text-field`` (and ``--calibration-source``)."""
    group = parser.add_mutually_exclusive_group()
    if exclusive_with_source:
        group.add_argument("--calibration-source", choices=["sst2", "mrpc", "wikitext2"],
                           help="where calibration text comes from (default: per task, see README)")
    group.add_argument("--calibration-file", metavar="FILE",
                       help="calibrate on this text: .txt (encoders: one example per non-empty line; wikitext2: the "
                            "file as running text cut into --window-token windows) or .jsonl (a 'text' field per line)")
    group.add_argument("--calibration-dataset", type=_dataset_spec, metavar="NAME[:CONFIG]:SPLIT[:COLUMN]",
                       help="calibrate on a column (default 'text') of a datasets split, e.g. "
                            "Salesforce/wikitext:wikitext-2-raw-v1:train:text (needs a network)")
    parser.add_argument("--text-field", help="the field of a .jsonl --calibration-file holding the text (default text)")


def _device_name(text: str) -> str:
    """``--device``: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (the machine is asked when the command runs)."""
    if text in ("cpu", "cuda", "auto") or re.fullmatch(r"cuda:\d+", text):
        return text
    raise argparse.ArgumentTypeError(f"must be cpu, cuda, cuda:N or auto, got {text!r}")


def _device_map(value: str):
    """``--device-map``: a strategy name, or a JSON file holding ``{module path: device}``."""
    from statlab.models.loading import DEVICE_MAP_STRATEGIES

    if value in DEVICE_MAP_STRATEGIES:
        return value
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"give {', '.join(DEVICE_MAP_STRATEGIES)} or a JSON file; no file {value}")
    try:
        device_map = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise argparse.ArgumentTypeError(f"{value} is no JSON device map: {error}") from None
    if not isinstance(device_map, dict) or not device_map:
        raise argparse.ArgumentTypeError(f"{value} must hold a non-empty JSON object {{module path: device}}")
    return device_map


def _max_tokens(value: str):
    """``--max-tokens``: a positive count, 0 for all tokens, or ``auto`` (CPU default, all on a GPU)."""
    if value == "auto":
        return value
    try:
        count = int(value)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(f"--max-tokens must be 0 (all), a positive count or auto, got {value}")
    return None if count == 0 else count


_EVAL_TASKS = sorted(set(_TASKS) | {"ptb", "c4"})


def _eval_task(text: str) -> str:
    """``eval --task``: one of :data:`_EVAL_TASKS`, or ``lm-eval:`` and distinct lm-eval task names."""
    if text.startswith(LM_EVAL_PREFIX):
        try:
            parse_lm_eval_task(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return text
    if text not in _EVAL_TASKS:
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(_EVAL_TASKS)} or "
                                         "lm-eval:TASK[,TASK...])")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="statlab", description="STAT structured pruning of transformers")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="one JSON object on stdout; the report goes to stderr")
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")
    hardware = argparse.ArgumentParser(add_help=False)  # prune, eval, compare
    hardware.add_argument("--device", type=_device_name, metavar="{cpu,cuda,cuda:N,auto}",
                          help="where the model runs: cpu (default), cuda, cuda:N, or auto (cuda where available); "
                               "with --offload, where its blocks compute")
    hardware.add_argument("--offload", action="store_true",
                          help="keep the blocks in CPU memory and compute each on --device only while it runs "
                               "(accelerate's offloading hooks): a model larger than the GPU")
    hardware.add_argument("--device-map", type=_device_map, metavar="{auto,balanced,sequential,FILE.json}",
                          help="place the model with accelerate's dispatch (prune, eval): a strategy, or a JSON "
                               "file {module path: GPU index | cpu | disk}; every block is pruned where it lies")
    hardware.add_argument("--offload-folder", help="with --device-map: the folder of blocks mapped to disk and of "
                                                   "their pruned weights (default: a temporary folder)")
    hardware.add_argument("--dtype", choices=DTYPES,
                          help="the model's parameter dtype (default float32; eval of a plan: the plan's own)")
    window_help = (f"perplexity and calibration windows of decoders, in tokens, and their MAC reference length "
                   f"(default {DEFAULT_WINDOW}, the CPU stand-in; --window 2048 is the Llama-2 protocol)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prune", parents=[common, hardware], help="prune a model to a budget and save the plan")
    p.add_argument("--model", required=True, help="minilm, minilm-distilbert, smollm2, a hub id or a path")
    p.add_argument("--task", required=True, choices=_TASKS,
                   help="the probe/perplexity tasks, or a GLUE task / squad / squad_v2 for a fine-tuned task model")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--mac-fraction", type=_fraction, help="fraction of block MACs to keep, in (0, 1]")
    budget.add_argument("--sparsity", type=_sparsity, help="fraction of attention+MLP parameters to remove, in [0, 1)")
    p.add_argument("--method", default="stat", choices=METHOD_NAMES)
    p.add_argument("--backend", default="fast", choices=["fast", "reference"])
    p.add_argument("--calibration-size", type=_count,
                   help=f"calibration sentences (default {DEFAULT_CALIBRATION_SIZE}) or, for wikitext2, windows "
                        f"(default {DEFAULT_CALIBRATION_WINDOWS})")
    p.add_argument("--window", type=_window, default=DEFAULT_WINDOW, help=window_help)
    _add_calibration_text(p, exclusive_with_source=True)
    p.add_argument("--ridge", type=_ridge, default=0.0,
                   help="relative ridge of the corrections, >= 0, or gcv (stat only: each module's ridge chosen by "
                        "generalised cross-validation on its calibration statistics)")
    p.add_argument("--one-pass", action="store_true", help="do not propagate through pruned layers")
    p.add_argument("--attention-units", choices=ATTENTION_UNITS, default="groups",
                   help="a GQA model's attention units: whole KV groups (default) or query heads, the same number "
                        "kept in every group of a layer (stat only)")
    p.add_argument("--order", choices=tuple(ORDERS), default="joint",
                   help="joint: heads and neurons sized by one threshold and pruned in one pass (default); "
                        "'neurons first': the MLPs pruned first, then the heads measured again on that model and "
                        "sized with what is left of the budget (stat only)")
    p.add_argument("--keep-modules", action="store_true",
                   help="remove no module whole: every layer keeps at least one head (one query head per group with "
                        "--attention-units heads) and one neuron (stat only)")
    p.add_argument("--precision", choices=GRAM_PRECISIONS, default="fp64",
                   help="accumulation of the Grams: fp64 (default; CPU, A100/H100/H200), fp32, or tf32 (TF32 tensor "
                        "cores on CUDA)")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--out", required=True,
                   help="directory for the plan: new, empty, or holding a plan (which is replaced)")
    p.set_defaults(func=run_prune)

    e = sub.add_parser("eval", parents=[common, hardware], help="evaluate a model or a saved plan")
    e.add_argument("model", help="a model name/path or a plan directory")
    scored = e.add_mutually_exclusive_group(required=True)
    scored.add_argument("--task", type=_eval_task, metavar="{" + ",".join(_EVAL_TASKS) + ",lm-eval:TASK[,TASK...]}",
                        help="ptb: Penn Treebank test sentences joined with spaces; c4: the first 256 windows of "
                             "seeded-shuffled documents of C4's first en validation shard (both need a network); "
                             "lm-eval:piqa,arc_easy: zero-shot tasks of lm-evaluation-harness (the lmeval extra)")
    scored.add_argument("--text-file", metavar="FILE",
                        help="perplexity of any text (causal LMs): .txt as running text, or .jsonl text fields joined "
                             "by blank lines; windowed and counted as WikiText-2; size and SHA-256 in the JSON")
    e.add_argument("--text-field", help="the field of a .jsonl --text-file holding the text (default text)")
    e.add_argument("--task-dir", help="lm-eval tasks: a folder of local task YAMLs, searched first")
    e.add_argument("--allow-overlap", action="store_true",
                   help="score a plan on the very file it was calibrated on (refused by default)")
    e.add_argument("--limit", type=_count, help="evaluate on this many dev examples only")
    e.add_argument("--window", type=_window, default=DEFAULT_WINDOW, help=window_help)
    e.add_argument("--max-tokens", type=_max_tokens, default="auto",
                   help=f"perplexity: evaluate the first whole windows up to this many tokens (default "
                        f"{CPU_MAX_TOKENS} on CPU, all on GPU; 0: all)")
    e.add_argument("--precision", choices=("fp32", "tf32"), default="fp32",
                   help="fp32 matrix products (default), or tf32 (TF32 tensor cores on CUDA)")
    e.add_argument("--seed", type=_seed, default=0, help="seed of the probe (sst2, mrpc) or of C4's document order")
    e.set_defaults(func=run_eval)

    c = sub.add_parser("compare", parents=[common, hardware], help="every method at every MAC budget on one task: table, JSON, plot")
    c.add_argument("--model", required=True)
    c.add_argument("--task", required=True, choices=_TASKS)
    c.add_argument("--methods", type=_methods, default=list(METHOD_NAMES),
                   help="comma-separated names (stat, goa, slimllm, kwon, flap, activation, magnitude, random)")
    c.add_argument("--budgets", type=_budgets, default=[0.8, 0.6, 0.5],
                   help="comma-separated MAC fractions kept, each in (0, 1]")
    c.add_argument("--calibration-size", type=_count, help="sentences (encoders) or windows (wikitext2)")
    _add_calibration_text(c, exclusive_with_source=False)
    c.add_argument("--window", type=_window, default=DEFAULT_WINDOW, help=window_help)
    c.add_argument("--max-tokens", type=_max_tokens, default="auto")
    c.add_argument("--precision", choices=GRAM_PRECISIONS, default="fp64", help="accumulation of the Grams (as prune)")
    c.add_argument("--limit", type=_count, help="encoder tasks: evaluate on this many dev examples only")
    c.add_argument("--seed", type=_seed, default=0)
    c.add_argument("--plot", help="save the metric-vs-budget plot here (PNG)")
    c.add_argument("--checkpoint", help="JSON file saved after every run; an interrupted comparison resumes from it")
    c.set_defaults(func=run_compare)

    f = sub.add_parser("finetune", parents=[common],
                       help="fine-tune an encoder into a GLUE task model (transformers' Trainer), save_pretrained")
    f.add_argument("--model", required=True, help="minilm, a hub encoder id or a local encoder directory")
    f.add_argument("--task", required=True, choices=sorted(GLUE_TASKS), help="offline: sst2 or mrpc")
    f.add_argument("--out", required=True, help="new or empty directory (or an earlier fine-tune, replaced)")
    f.add_argument("--steps", type=_count, help="optimiser steps (default: 800 for sst2, 460 for mrpc, at batch 16)")
    f.add_argument("--batch-size", type=_count, default=16)
    f.add_argument("--learning-rate", type=_bounded(float, "", low=0, low_open=True), default=5e-5,
                   help="peak of the linear warm-up (10%% of the steps) and decay")
    f.add_argument("--seed", type=_seed, default=0)
    f.set_defaults(func=run_finetune)

    d = sub.add_parser("demo", parents=[common], help="the main job: prune the bundled MiniLM encoder and show the result")
    d.add_argument("--mac-fraction", type=_fraction, default=0.5)
    d.add_argument("--calibration-size", type=_count, default=512)
    d.add_argument("--out", default="out/demo")
    d.set_defaults(func=run_demo)

    i = sub.add_parser("id-demo", parents=[common], help="interpolative decomposition of MiniLM's MLP activations")
    i.add_argument("--sentences", type=_count, default=256)
    i.add_argument("--seed", type=_seed, default=0)
    i.add_argument("--out", default="out/id-demo")
    i.set_defaults(func=run_id_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; exit 0, 2 for a user's mistake (one line, no traceback), 1 for a bug, 130 on Ctrl-C."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # argparse has printed usage and the error (2), or the help (0)
        return stop.code if isinstance(stop.code, int) else 2
    args.argv = argv  # recorded with results (compare)
    name = f"statlab {args.command}"
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, ModuleNotFoundError) as error:  # the input, the machine, a missing package
        if args.debug:
            traceback.print_exc()
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"{name}: error: {message}", file=sys.stderr)
        return 2
    except Exception:  # noqa: BLE001 - anything else is a bug: show it whole
        print(f"{name}: internal error (a bug in statlab; please report it with this traceback):", file=sys.stderr)
        traceback.print_exc()
        return 1
    result, non_finite = _finite(result)
    if getattr(args, "json", False):
        if non_finite:
            result["non_finite"] = non_finite
        print(json.dumps(result, default=float, allow_nan=False))
    if non_finite:
        print(f"{name}: error: not finite: {', '.join(non_finite)} (the model's outputs are NaN or Inf)",
              file=sys.stderr)
        return 2
    return 0


def _finite(value, path=""):
    """``value`` with every NaN/Inf float replaced by None, and the paths of those replaced."""
    if isinstance(value, float) and not math.isfinite(value):
        return None, [path or "result"]
    if isinstance(value, dict):
        pairs = [(k, _finite(v, f"{path}.{k}" if path else str(k))) for k, v in value.items()]
        return {k: v for k, (v, _) in pairs}, [p for _, (_, bad) in pairs for p in bad]
    if isinstance(value, (list, tuple)):
        items = [_finite(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return [v for v, _ in items], [p for _, bad in items for p in bad]
    return value, []


if __name__ == "__main__":
    sys.exit(main())
