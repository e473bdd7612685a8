"""The ``statlab`` command line: ``prune``, ``eval``, ``compare``, ``demo``, ``id-demo``.

Every command takes ``--json`` for one machine-readable object on stdout (the
human-readable report then goes to stderr) and shows tqdm bars on long steps.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from statlab.calibration import (
    CPU_MAX_TOKENS,
    DEFAULT_CALIBRATION_SIZE,
    DEFAULT_CALIBRATION_SOURCE,
    DEFAULT_CALIBRATION_WINDOWS,
    DEFAULT_WINDOW,
    EVAL_SEQ_LEN,  # noqa: F401 (re-exported for code written against statlab.cli)
    calibration_batches,
    cost_seq_len,
)

# the names in statlab.methods.METHODS, spelled out so that `--help` need not import torch
METHOD_NAMES = ("stat", "goa", "slimllm", "activation", "magnitude", "random")


def _report(args):
    """Where human-readable lines go: stdout, or stderr when stdout carries JSON."""
    stream = sys.stderr if getattr(args, "json", False) else sys.stdout
    return lambda *parts: print(*parts, file=stream, flush=True)


def run_prune(args) -> dict:
    import statlab
    from statlab.models.loading import load_model
    from statlab.plots import plot_plan

    say = _report(args)
    model, tokenizer = load_model(args.model, quiet=True)
    batches, calib = calibration_batches(tokenizer, args.task, size=args.calibration_size,
                                         source=args.calibration_source, seed=args.seed, window=args.window)
    n_units = max(model.get_submodule(b.mlp_out).in_features for b in statlab.models.get_adapter(model).blocks(model))
    say(f"calibration: {calib['examples']} {calib['source']} examples, {calib['tokens']} tokens "
        f"({calib['tokens'] / n_units:.1f} per MLP neuron)")
    if args.task in ("sst2", "mrpc"):
        from statlab.evaluate import fit_probe

        probe = fit_probe(model, tokenizer, args.task, seed=args.seed)
    start = time.perf_counter()
    plan = statlab.prune(model, batches, mac_fraction=args.mac_fraction, sparsity=args.sparsity,
                         backend=args.backend, method=args.method, seed=args.seed,
                         propagate=not args.one_pass, ridge=args.ridge, seq_len=cost_seq_len(args.task, args.window),
                         base=args.model)
    seconds = time.perf_counter() - start
    plan.meta["calibration"].update(calib)
    plan.save(args.out)
    if args.task in ("sst2", "mrpc"):
        probe.save(Path(args.out) / f"probe-{args.task}")
    plot = Path(args.out) / "plan.png"
    plot_plan(plan, plot, title=f"statlab prune --model {args.model} --task {args.task} ({args.method}, {plan.meta['budget']})")
    kept = plan.kept_fraction()
    say(f"pruned {args.model} with {args.method} in {seconds:.1f} s: {kept['heads']:.0%} of heads, "
        f"{kept['neurons']:.0%} of neurons kept; plan in {args.out}, plot {plot}")
    return {"out": str(args.out), "prune_seconds": seconds, "kept": kept, "budget": plan.meta["budget"],
            "method": args.method, "calibration": calib}


def run_eval(args) -> dict:
    from statlab.evaluate import evaluate_model

    say = _report(args)
    result = evaluate_model(args.model, args.task, limit=args.limit, seed=args.seed, window=args.window,
                            max_tokens=args.max_tokens)
    shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in result["metrics"].items())
    say(f"{args.model} on {args.task}: {shown}")
    if args.task == "wikitext2" and result["metrics"]["max_tokens"] is not None:
        say(f"(first {result['metrics']['tokens']} predicted tokens of the test split: --max-tokens "
            f"{result['metrics']['max_tokens']}; --max-tokens 0 evaluates all of it)")
    say(f"MACs per {result['seq_len']}-token sequence (attention + MLP blocks): {result['macs'] / 1e6:.1f} M of "
        f"{result['dense_macs'] / 1e6:.1f} M dense ({result['macs'] / result['dense_macs']:.1%}); "
        f"parameters {result['params'] / 1e6:.2f} M of {result['dense_params'] / 1e6:.2f} M")
    return result


def run_compare(args) -> dict:
    from statlab import compare

    say = _report(args)
    result = compare.compare(args.model, args.task, args.methods.split(","), [float(b) for b in args.budgets.split(",")],
                             calibration_size=args.calibration_size, seed=args.seed, window=args.window,
                             max_tokens=args.max_tokens, limit=args.limit, checkpoint=args.checkpoint, say=say)
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


def run_id_demo(args) -> dict:
    from statlab import id_demo

    result = id_demo.run(sentences=args.sentences, seed=args.seed, out=args.out)
    return {k: v for k, v in result.items() if k != "table"}


def _max_tokens(value: str):
    """``--max-tokens``: a positive count, 0 for all tokens, or ``auto`` (CPU default, all on a GPU)."""
    if value == "auto":
        return value
    count = int(value)
    if count < 0:
        raise argparse.ArgumentTypeError(f"--max-tokens must be 0 (all), a positive count or auto, got {value}")
    return None if count == 0 else count


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="statlab", description="STAT structured pruning of transformers")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prune", help="prune a model to a budget and save the plan")
    p.add_argument("--model", required=True, help="minilm, minilm-distilbert, smollm2, a hub id or a path")
    p.add_argument("--task", required=True, choices=sorted(DEFAULT_CALIBRATION_SOURCE))
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--mac-fraction", type=float, help="fraction of block MACs to keep, in (0, 1]")
    budget.add_argument("--sparsity", type=float, help="fraction of attention+MLP parameters to remove, in [0, 1)")
    p.add_argument("--method", default="stat", choices=METHOD_NAMES)
    p.add_argument("--backend", default="fast", choices=["fast", "reference"])
    p.add_argument("--calibration-size", type=int,
                   help=f"calibration sentences (default {DEFAULT_CALIBRATION_SIZE}) or, for wikitext2, windows "
                        f"(default {DEFAULT_CALIBRATION_WINDOWS})")
    p.add_argument("--window", type=int, default=DEFAULT_WINDOW,
                   help=f"wikitext2: tokens per calibration window and MAC reference length (default {DEFAULT_WINDOW})")
    p.add_argument("--calibration-source", choices=["sst2", "mrpc", "wikitext2"],
                   help="where calibration text comes from (default: per task, see README)")
    p.add_argument("--ridge", type=float, default=0.0, help="relative ridge of the corrections")
    p.add_argument("--one-pass", action="store_true", help="do not propagate through pruned layers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="directory for the plan")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_prune)

    e = sub.add_parser("eval", help="evaluate a model or a saved plan")
    e.add_argument("model", help="a model name/path or a plan directory")
    e.add_argument("--task", required=True, choices=["stsb", "sst2", "mrpc", "wikitext2"])
    e.add_argument("--limit", type=int, help="evaluate on this many dev examples only")
    e.add_argument("--window", type=int, default=DEFAULT_WINDOW,
                   help=f"wikitext2: perplexity window in tokens (default {DEFAULT_WINDOW}; 2048 in the Llama-2 protocol)")
    e.add_argument("--max-tokens", type=_max_tokens, default="auto",
                   help=f"wikitext2: evaluate the first whole windows up to this many tokens (default "
                        f"{CPU_MAX_TOKENS} on CPU, all on GPU; 0: all)")
    e.add_argument("--seed", type=int, default=0, help="seed of the probe (sst2, mrpc)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=run_eval)

    c = sub.add_parser("compare", help="every method at every MAC budget on one task: table, JSON, plot")
    c.add_argument("--model", required=True)
    c.add_argument("--task", required=True, choices=sorted(DEFAULT_CALIBRATION_SOURCE))
    c.add_argument("--methods", default=",".join(METHOD_NAMES),
                   help="comma-separated names (stat, goa, slimllm, activation, magnitude, random)")
    c.add_argument("--budgets", default="0.8,0.6,0.5", help="comma-separated MAC fractions kept")
    c.add_argument("--calibration-size", type=int, help="sentences (encoders) or windows (wikitext2)")
    c.add_argument("--window", type=int, default=DEFAULT_WINDOW)
    c.add_argument("--max-tokens", type=_max_tokens, default="auto")
    c.add_argument("--limit", type=int, help="encoder tasks: evaluate on this many dev examples only")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--plot", help="save the metric-vs-budget plot here (PNG)")
    c.add_argument("--checkpoint", help="JSON file saved after every run; an interrupted comparison resumes from it")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=run_compare)

    d = sub.add_parser("demo", help="the main job: prune the bundled MiniLM encoder and show the result")
    d.add_argument("--mac-fraction", type=float, default=0.5)
    d.add_argument("--calibration-size", type=int, default=512)
    d.add_argument("--out", default="out/demo")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=run_demo)

    i = sub.add_parser("id-demo", help="interpolative decomposition of MiniLM's MLP activations")
    i.add_argument("--sentences", type=int, default=256)
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--out", default="out/id-demo")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=run_id_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # recorded with results (compare)
    try:
        result = args.func(args)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"statlab {args.command}: error: {error}", file=sys.stderr)
        return 2
    if getattr(args, "json", False):
        print(json.dumps(result, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
