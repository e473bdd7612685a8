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

from stat_grid import PAPER, add_stat_flags, stat_grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="stat")
    parser.add_argument("--budgets", default="0.5")
    parser.add_argument("--sources", default="mrpc")
    parser.add_argument("--sizes", default="512")
    add_stat_flags(parser, own_weighting="the post-LN depth weights")
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
                for point in stat_grid(args) if method == "stat" else [PAPER]:
                    chosen, fixed = method_and_ridge(method, **point)
                    ridge = point["ridge"] if point["ridge"] == "gcv" else fixed  # as the JSON stores it
                    for budget in map(float, args.budgets.split(",")):
                        model = copy.deepcopy(dense)
                        start = time.perf_counter()
                        plan = statlab.prune(model, batches, mac_fraction=budget, method=chosen,
                                             ridge=fixed, seq_len=EVAL_SEQ_LEN,
                                             base=args.model)
                        seconds = time.perf_counter() - start
                        row = {"method": method, "budget": budget, "source": source, "calibration_size": size,
                               "calibration_tokens": calib["tokens"], **point, "ridge": ridge,
                               "metrics": stsb_spearman(model, tokenizer, half=args.half, disable_progress=True),
                               "macs": block_macs(model, EVAL_SEQ_LEN), "dense_macs": block_macs(dense, EVAL_SEQ_LEN),
                               "kept": plan.kept_fraction(), "prune_seconds": round(seconds, 1)}
                        print(json.dumps(row), file=sys.stderr, flush=True)
                        results.append(row)
    machine = {"torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()}
    print(json.dumps({"sweep": vars(args), "machine": machine, "results": results}, indent=1))


if __name__ == "__main__":
    main()
