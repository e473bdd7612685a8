"""STAT's post-LN layer weights on or off (``Stat(weighting=False)``), MiniLM, STS-B tune half; one JSON document.

    python benchmarks/tune_layer_weights.py --budgets 0.8,0.6,0.5,0.4

Calibration: the CLI default (512 MRPC training sentences). Scored on the
750 even-numbered STS-B dev pairs (``half="tune"``), where defaults are chosen.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", default="0.8,0.6,0.5,0.4")
    args = parser.parse_args()

    import statlab
    from statlab.calibration import calibration_batches
    from statlab.evaluate import stsb_spearman
    from statlab.methods import Stat
    from statlab.models.loading import load_model

    dense, tokenizer = load_model("minilm")
    dense.eval()
    batches, calib = calibration_batches(tokenizer, "stsb")
    rows = [{"variant": "dense", "spearman": stsb_spearman(dense, tokenizer, half="tune")["spearman"]}]
    for mu in map(float, args.budgets.split(",")):
        for method in (Stat(), Stat(weighting=False)):
            model = copy.deepcopy(dense)
            plan = statlab.prune(model, batches, mac_fraction=mu, seq_len=128, base="minilm", method=method)
            rows.append({"variant": method.label, "mac_fraction": mu, "kept": plan.kept_fraction(),
                         "spearman": stsb_spearman(model, tokenizer, half="tune")["spearman"]})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "tune_layer_weights", "half": "tune", "calibration": calib, "results": rows},
                     indent=1))


if __name__ == "__main__":
    main()
