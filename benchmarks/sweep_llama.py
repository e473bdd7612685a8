"""WikiText-2 perplexity of a pruned decoder over methods and sparsities; prints one JSON document.

Calibration: ``--windows`` windows of ``--window`` tokens from WikiText-2
validation; evaluation: the first whole test windows up to ``--max-tokens``,
or with ``--eval validation`` the first validation windows calibration did not
draw (where defaults are chosen); ``--text-file`` adds a second corpus's first
windows (``benchmarks/second_corpus.py`` writes one). ``--ridges`` gives STAT's correction ridges
(``gcv``: chosen per module by generalised cross-validation).
Example (the README's SmolLM2 table):

    python benchmarks/sweep_llama.py --methods stat,activation,magnitude \\
        --sparsities 0.1,0.2,0.3,0.4,0.5 --windows 32 --max-tokens 16384 \\
        --plot benchmarks/results/smollm2_sparsity.png
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time

from stat_grid import PAPER, add_stat_flags, stat_grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--methods", default="stat,activation,magnitude")
    parser.add_argument("--sparsities", default="0.1,0.2,0.3,0.4,0.5")
    parser.add_argument("--windows", type=int, default=32, help="calibration windows")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=16384)
    add_stat_flags(parser, own_weighting="the pre-LN pivot trend")
    parser.add_argument("--attention-units", default="groups",
                        help="STAT's attention units to run: groups (whole KV groups), heads (query heads) or groups,heads")
    parser.add_argument("--eval", default="test", choices=["test", "validation"],
                        help="test windows, or validation windows calibration did not draw")
    parser.add_argument("--text-file", help="a second corpus (.txt or .jsonl, e.g. benchmarks/second_corpus.py's): "
                                            "every model's perplexity on its first whole windows up to --max-tokens too")
    parser.add_argument("--plot", help="save a perplexity-vs-sparsity plot here")
    args = parser.parse_args()

    import torch
    import transformers

    import statlab
    from statlab.calibration import calibration_batches
    from statlab.costs import block_macs
    from statlab.data import held_out_windows, token_windows
    from statlab.evaluate import count_parameters, perplexity
    from statlab.methods import method_and_ridge
    from statlab.models.loading import load_model

    transformers.logging.set_verbosity_error()
    dense, tokenizer = load_model(args.model)
    batches, calib = calibration_batches(tokenizer, "wikitext2", size=args.windows, window=args.window)
    if args.eval == "validation":
        test = held_out_windows(tokenizer, batches, window=args.window, max_tokens=args.max_tokens)
    else:
        test = token_windows(tokenizer, "test", window=args.window, max_tokens=args.max_tokens)

    second = None
    if args.text_file:
        from statlab.corpora import read_file, text_windows

        corpus = read_file(args.text_file)
        second = text_windows(tokenizer, corpus.text, window=args.window, max_tokens=args.max_tokens,
                              name=args.text_file)

    def evaluate(model):
        row = {**perplexity(model, test, disable_progress=True), "macs": block_macs(model, args.window),
               "params": count_parameters(model)}
        if second is not None:
            row["text_file"] = perplexity(model, second, disable_progress=True)
        return row

    results = [{"method": "dense", "sparsity": 0.0, **evaluate(dense)}]
    print(json.dumps(results[0]), file=sys.stderr, flush=True)
    for method in args.methods.split(","):
        units = args.attention_units.split(",")
        for point in stat_grid(args, attention_units=units) if method == "stat" else \
                [{**PAPER, "attention_units": "groups"}]:
            chosen, fixed = method_and_ridge(method, **point)
            ridge = point["ridge"] if point["ridge"] == "gcv" else fixed  # as the JSON stores it
            for sparsity in map(float, args.sparsities.split(",")):
                model = copy.deepcopy(dense)
                start = time.perf_counter()
                plan = statlab.prune(model, batches, sparsity=sparsity, method=chosen, seq_len=args.window,
                                     ridge=fixed, base=args.model)
                row = {"method": method, **point, "ridge": ridge, "sparsity": sparsity,
                       "prune_seconds": round(time.perf_counter() - start, 1), "kept": plan.kept_fraction(),
                       **evaluate(model)}
                print(json.dumps(row), file=sys.stderr, flush=True)
                results.append(row)
    machine = {"torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()}
    document = {"sweep": vars(args), "calibration": calib, "machine": machine, "results": results}
    if args.text_file:
        document["text_file"] = corpus.source
    print(json.dumps(document, indent=1))
    if args.plot:
        plot(document, args.plot)


def sweep_eval(document) -> str:
    return "held-out validation" if document["sweep"].get("eval") == "validation" else "test"


def plot(document, path):
    from statlab.plots import save_figure
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    dense = next(r for r in document["results"] if r["method"] == "dense")
    ax.axhline(dense["perplexity"], color="gray", ls="--", label=f"dense {dense['perplexity']:.1f}")
    def run(r):
        return (r["method"], r.get("ridge", 0.0), r.get("dense_target", 0.0), r.get("intercept", False), r.get("split"),
                r.get("attention_units", "groups"), r.get("weighting", True), r.get("order", "joint"),
                r.get("keep_modules", False))

    runs = dict.fromkeys(run(r) for r in document["results"] if r["method"] != "dense")
    for key in runs:
        method, ridge, target, intercept, split, units, weighting, order, keep = key
        rows = [r for r in document["results"] if run(r) == key]
        alone = len({k[0] for k in runs if k[0] == method}) == 1
        plain = ridge in (0, 0.0) and not target and not intercept and split is None and units == "groups" \
            and weighting is True and order == "joint" and not keep
        label = method if alone and plain else \
            f"{method} ridge {ridge}" + (f" dense target {target:g}" if target else "") + (" intercept" * intercept) \
            + (f" split {split}" if split is not None else "") + (" query heads" if units == "heads" else "") \
            + ("" if weighting is True else " unweighted" if weighting is False else f" {weighting} weights") \
            + ("" if order == "joint" else f" {order}") + (" modules kept" if keep else "")
        ax.plot([r["sparsity"] for r in rows], [r["perplexity"] for r in rows], "o-", label=label)
    ax.set_yscale("log")
    ax.set_xlabel("sparsity (fraction of attention + MLP parameters removed)")
    ax.set_ylabel(f"WikiText-2 {sweep_eval(document)} perplexity")
    sweep = document["sweep"]
    ax.set_title(f"{sweep['model']}: {sweep['windows']}×{sweep['window']} calibration tokens, "
                 f"{dense['tokens']} test tokens", fontsize=9)
    ax.legend()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
