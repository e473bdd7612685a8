"""STS-B Spearman of pruned all-MiniLM-L6-v2 over a grid; prints one JSON document.

The grid is the product of methods, MAC budgets, calibration sources and sizes
and ridges (``gcv``: STAT's ridge chosen per module by generalised
cross-validation, ``Stat(ridge_rule="gcv")``). ``--half tune`` scores the even-numbered STS-B dev pairs (where the
defaults are chosen), ``--half report`` the odd-numbered ones (the figures the
README reports). Example (the README's curve):

    python benchmarks/sweep_encoder.py --methods stat,magnitude \\
        --budgets 0.9,0.8,0.7,0.6,0.5,0.4 --half report
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time


def weighting_option(text: str):
    """``Stat(weighting=...)`` of a ``--weightings`` entry: 1 (the model's rule), 0 (none), depth or trend."""
    return {"1": True, "0": False}.get(text, text)


def split_option(text: str):
    """``Stat(split=...)`` of a ``--splits`` entry: ``none`` (the paper's one threshold), ``proportional`` or a share."""
    return None if text == "none" else text if text == "proportional" else float(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="stat")
    parser.add_argument("--budgets", default="0.5")
    parser.add_argument("--sources", default="mrpc")
    parser.add_argument("--sizes", default="512")
    parser.add_argument("--ridges", default="0", help="relative ridges of STAT's corrections, or gcv")
    parser.add_argument("--dense-targets", default="0",
                        help="STAT's dense_target values: the weight of the dense model's outputs in each correction's target")
    parser.add_argument("--intercepts", default="0", help="STAT's intercept settings to run: 0, 1 or 0,1")
    parser.add_argument("--splits", default="none",
                        help="STAT's budget splits between the families: none (one threshold), proportional, or shares of the "
                             "removed cost taken from attention (Stat(split=...))")
    parser.add_argument("--weightings", default="1",
                        help="STAT's layer weightings of the error curves, comma-separated: 1 (the post-LN depth weights), 0 (none), "
                             "depth or trend (Stat(weighting=...))")
    parser.add_argument("--keep-modules", default="0",
                        help="STAT's keep_modules settings to run (no module removed whole): 0, 1 or 0,1")
    parser.add_argument("--orders", default="joint",
                        help="STAT's orders (Stat(order=...)): joint, 'neurons first' or both, comma-separated")
    parser.add_argument("--half", default="report", choices=["tune", "report"])
    parser.add_argument("--model", default="minilm")
    args = parser.parse_args()

    import torch
    import transformers

    import statlab
    from statlab.calibration import EVAL_SEQ_LEN, calibration_batches
    from statlab.costs import block_macs
    from statlab.evaluate import stsb_spearman
    from statlab.methods import method_and_ridge
    from statlab.models.loading import load_model

    transformers.logging.set_verbosity_error()
    dense, tokenizer = load_model(args.model)
    results = [{"method": "dense", "budget": 1.0, "metrics": stsb_spearman(dense, tokenizer, half=args.half,
                                                                             disable_progress=True)}]
    for source in args.sources.split(","):
        for size in map(int, args.sizes.split(",")):
            batches, calib = calibration_batches(tokenizer, "stsb", size=size, source=source)
            for method in args.methods.split(","):
                stat_grid = [(r, float(t), bool(int(c)), split_option(x), weighting_option(w), o, bool(int(f)))
                             for r in args.ridges.split(",") for t in args.dense_targets.split(",")
                             for x in args.splits.split(",") for c in args.intercepts.split(",")
                             for w in args.weightings.split(",") for o in args.orders.split(",")
                             for f in args.keep_modules.split(",")]
                for ridge, target, intercept, split, weighting, order, keep in stat_grid if method == "stat" else \
                        [("0", 0.0, False, None, True, "joint", False)]:
                    chosen, fixed = method_and_ridge(method, ridge, dense_target=target, intercept=intercept,
                                                     split=split, weighting=weighting, order=order,
                                                     keep_modules=keep)
                    ridge = ridge if ridge == "gcv" else fixed  # as the JSON stores it
                    for budget in map(float, args.budgets.split(",")):
                        model = copy.deepcopy(dense)
                        start = time.perf_counter()
                        plan = statlab.prune(model, batches, mac_fraction=budget, method=chosen,
                                             ridge=fixed, seq_len=EVAL_SEQ_LEN,
                                             base=args.model)
                        seconds = time.perf_counter() - start
                        row = {"method": method, "budget": budget, "source": source, "calibration_size": size,
                               "calibration_tokens": calib["tokens"], "ridge": ridge, "dense_target": target, "intercept": intercept,
                               "split": split, "weighting": weighting, "order": order, "keep_modules": keep,
                               "metrics": stsb_spearman(model, tokenizer, half=args.half, disable_progress=True),
                               "macs": block_macs(model, EVAL_SEQ_LEN), "dense_macs": block_macs(dense, EVAL_SEQ_LEN),
                               "kept": plan.kept_fraction(), "prune_seconds": round(seconds, 1)}
                        print(json.dumps(row), file=sys.stderr, flush=True)
                        results.append(row)
    machine = {"torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()}
    print(json.dumps({"sweep": vars(args), "machine": machine, "results": results}, indent=1))


if __name__ == "__main__":
    main()
