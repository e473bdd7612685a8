"""The paper's protocol on offline stand-ins: fine-tuned MiniLM classifiers pruned by every method.

For each task, the MiniLM classifier is fine-tuned once with ``statlab.finetune``
(cached under the user cache directory, keyed by its settings; rebuilt if
absent), then every method prunes it to each MAC fraction μ, calibrated on 512
training examples of the task (pairs for MRPC, read as the model reads them),
and its own head scores it on the full dev set. Prints the μ table and one
JSON document (also written to ``--out``, resumable through its checkpoint).

Usage: python benchmarks/task_models.py [--tasks sst2,mrpc] [--methods stat,...]
           [--budgets 0.9,0.8,0.7,0.6,0.5,0.4] [--out benchmarks/results/task_models.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from statlab import compare
from statlab.files import atomic_write
from statlab.finetune import cached_finetune, read_record
from statlab.methods import METHODS

BUDGETS = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="sst2,mrpc")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    parser.add_argument("--calibration-size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/task_models.json")
    args = parser.parse_args()
    budgets = [float(b) for b in args.budgets.split(",")]
    out = Path(args.out)
    document = {"machine": platform.processor() or platform.machine(), "tasks": {}}
    for task in args.tasks.split(","):
        started = time.perf_counter()
        model_dir = cached_finetune("minilm", task, seed=args.seed)
        record = read_record(model_dir)
        checkpoint = out.with_name(f"{out.stem}-{task}.checkpoint.json")
        result = compare.compare(str(model_dir), task, args.methods.split(","), budgets,
                                 calibration_size=args.calibration_size, seed=args.seed, checkpoint=checkpoint)
        result["model"] = f"minilm fine-tuned on {task} (statlab.finetune, cached)"
        print(f"\n{task}: dense dev {record['dev']} after a {record['train_seconds']:.0f} s fine-tune "
              f"({record['settings']['steps']} steps)")
        print(compare.table(result))
        if "accuracy" in result["dense"]["metrics"] and compare.HEADLINE[task][0] != "accuracy":
            print(compare.table(result, metric="accuracy"))
        document["tasks"][task] = {"finetune": record, "compare": result,
                                   "seconds": round(time.perf_counter() - started, 1)}
        atomic_write(out, json.dumps(document, indent=1) + "\n")
    print(json.dumps({task: {"dense": entry["compare"]["dense"]["metrics"]} for task, entry in
                      document["tasks"].items()}))


if __name__ == "__main__":
    main()
