"""Why STAT is not first on the fine-tuned task models: each gap measured against noise, allocation and fit.

``benchmarks/task_models.py`` reports every method on the dev sets; at some budgets
GOA or Kwon et al. score above STAT. For each task and MAC fraction this script
prunes the cached task model with

- ``stat``, ``kwon``, ``goa`` (the leaders; their plans are kept for the next item),
- ``stat @ kwon sizes`` and ``stat @ goa sizes``: STAT's selection and correction at
  the peer's per-module sizes (``Stat(sizes=plan.module_sizes())``), which separates
  the allocation from what is done within each module,
- ``stat (2048 examples)`` (4x the calibration tokens per unit), ``stat (intercept)``
  and ``stat (gcv ridge)``: the correction's data and fit,

and scores each by its own head on two sets:

- the dev set the tables report (accuracy, F1 for MRPC), with each configuration's
  paired bootstrap interval against ``stat`` (the same examples resampled for both),
- a held-out slice of the task's training pool, outside both calibration draws
  (:func:`statlab.data.held_out_examples`): the agreement of the predictions with the
  dense model's and the mean KL divergence from the dense head's distribution. The
  task model trained on this split, so its accuracy there is not a score; fidelity is.

Nothing here chooses a default. Prints one line per run and writes one JSON
document to ``--out``, rewritten after every run and resumed from.

Usage: python benchmarks/explain_task_models.py [--tasks sst2,mrpc] [--budgets 0.8,0.6,0.4]
           [--configs stat,kwon,goa,...] [--held-out 1000] [--out benchmarks/results/explain_task_models.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import re
import time
from pathlib import Path

import numpy as np
import torch

import statlab
from statlab import data
from statlab.calibration import calibration_batches, cost_seq_len
from statlab.compare import HEADLINE
from statlab.evaluate.heads import glue_scores, head_logits, label_map
from statlab.evaluate.uncertainty import bootstrap_interval
from statlab.files import atomic_write
from statlab.finetune import cached_finetune
from statlab.methods import Stat
from statlab.models.loading import load_model
from statlab.records import ModuleKey

PEERS = ("kwon", "goa")
CONFIGS = ("stat", *PEERS, *(f"stat @ {p} sizes" for p in PEERS), "stat (2048 examples)", "stat (intercept)",
           "stat (gcv ridge)")
LARGE_CALIBRATION = 2048


def method_of(config: str, peer_sizes: dict):
    """The method (name or configured ``Stat``) of one configuration; ``peer_sizes`` maps a peer to its sizes.

    ``stat``; a peer's name; ``stat @ PEER sizes``; ``stat (intercept)``, ``stat (gcv ridge)``,
    ``stat (ridge X)``, ``stat (split S)`` (``Stat(split=S)``); ``stat (N examples)`` / ``stat (N windows)`` (STAT on another
    calibration size: :func:`calibration_size_of`).
    """
    if config == "stat" or re.fullmatch(r"stat \(\d+ (examples|windows)\)", config):
        return "stat"
    if config == "stat (intercept)":
        return Stat(intercept=True)
    if config == "stat (gcv ridge)":
        return Stat(ridge_rule="gcv")
    if ridge := re.fullmatch(r"stat \(ridge ([0-9.e-]+)\)", config):
        return Stat(ridge=float(ridge.group(1)))
    if split := re.fullmatch(r"stat \(split (proportional|[0-9.]+)\)", config):
        return Stat(split=split.group(1) if split.group(1) == "proportional" else float(split.group(1)))
    if peer := re.fullmatch(r"stat @ (\w+) sizes", config):
        if peer.group(1) not in peer_sizes:
            raise ValueError(f"{config!r} needs {peer.group(1)!r} run first at this budget (list it before)")
        return Stat(sizes=peer_sizes[peer.group(1)])
    if config.startswith("stat"):
        raise ValueError(f"unknown configuration {config!r}")
    return config


def calibration_size_of(config: str, default: int) -> int:
    """``N`` of ``stat (N examples)`` / ``stat (N windows)``, else ``default``."""
    size = re.fullmatch(r"stat \((\d+) (examples|windows)\)", config)
    return int(size.group(1)) if size else default


def scores(logits: torch.Tensor, gold: np.ndarray, order: np.ndarray, dense_logits: torch.Tensor, task: str) -> dict:
    """Accuracy (F1), agreement with the dense predictions, mean KL(dense || pruned) of one model's logits (S, C)."""
    p_log = torch.log_softmax(logits[:, order].double(), -1)  # (S, C) dataset-class order
    q_log = torch.log_softmax(dense_logits[:, order].double(), -1)
    predicted = p_log.argmax(-1).numpy()
    dense_predicted = q_log.argmax(-1).numpy()
    out = {"accuracy": float(np.mean(predicted == gold)),
           "agreement": float(np.mean(predicted == dense_predicted)),
           "kl_from_dense": float((q_log.exp() * (q_log - p_log)).sum(-1).mean())}
    if task == "mrpc":
        out["f1"] = glue_scores(predicted, gold, task)["f1"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="sst2,mrpc")
    parser.add_argument("--budgets", default="0.8,0.6,0.4")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--calibration-size", type=int, default=512)
    parser.add_argument("--held-out", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/explain_task_models.json")
    args = parser.parse_args()
    configs = args.configs.split(",")
    for config in configs:
        try:
            method_of(config, dict.fromkeys(PEERS, {}))
        except ValueError as e:
            parser.error(f"{e}; e.g. {', '.join(CONFIGS)}")
    out = Path(args.out)
    document = json.loads(out.read_text()) if out.exists() else {"runs": []}
    document.update({"machine": platform.processor() or platform.machine(), "held_out": args.held_out,
                     "calibration_size": args.calibration_size, "seed": args.seed})
    done = {(r["task"], r["budget"], r["config"]): r for r in document["runs"]}
    for task in args.tasks.split(","):
        model_dir = cached_finetune("minilm", task, seed=args.seed)
        dense, tokenizer = load_model(str(model_dir), quiet=True)
        order, _ = label_map(dense.config, task)
        seq_len = cost_seq_len(task)
        calibration = {size: calibration_batches(tokenizer, task, size=size, seed=args.seed, task_model=True)
                       for size in (args.calibration_size, LARGE_CALIBRATION)}
        dev_rows = data.load_task(task, "validation")
        sets = {"dev": (data.task_texts(dev_rows, task), np.asarray(dev_rows["label"][:])),
                "held_out": None}
        held = data.held_out_examples(task, args.held_out,
                                      calibration_sizes=(args.calibration_size, LARGE_CALIBRATION), seed=args.seed)
        sets["held_out"] = (held.texts, held.labels)

        def logits_of(model):
            return {name: head_logits(model, tokenizer, texts, disable_progress=True)
                    for name, (texts, _) in sets.items()}

        dense_logits = logits_of(dense)
        dense_scores = {name: scores(dense_logits[name], gold, order, dense_logits[name], task)
                        for name, (_, gold) in sets.items()}
        document.setdefault("dense", {})[task] = dense_scores
        document.setdefault("calibration", {})[task] = {str(size): info for size, (_, info) in calibration.items()}
        headline = HEADLINE[task][0]
        for budget in (float(b) for b in args.budgets.split(",")):
            peer_sizes, predictions = {}, {}
            for config in configs:
                saved = done.get((task, budget, config))
                if saved is not None:
                    if "sizes" in saved:
                        peer_sizes[config] = {ModuleKey(layer, kind): n for layer, kind, n in saved["sizes"]}
                    predictions[config] = np.asarray(saved["dev_predicted"])
                    continue
                model = copy.deepcopy(dense)
                size = calibration_size_of(config, args.calibration_size)
                start = time.perf_counter()
                plan = statlab.prune(model, calibration[size][0], mac_fraction=budget,
                                     method=method_of(config, peer_sizes), seed=args.seed, seq_len=seq_len,
                                     base=str(model_dir))
                seconds = time.perf_counter() - start
                logits = logits_of(model)
                run = {"task": task, "budget": budget, "config": config, "prune_seconds": round(seconds, 1),
                       "kept": plan.kept_fraction(), "kept_cost": plan.meta["kept_cost"] / plan.meta["dense_cost"],
                       **{name: scores(logits[name], gold, order, dense_logits[name], task)
                          for name, (_, gold) in sets.items()}}
                run["dev_predicted"] = logits["dev"][:, order].argmax(-1).tolist()
                if config in PEERS:
                    peer_sizes[config] = plan.module_sizes()
                    run["sizes"] = [[k.layer, k.kind, n] for k, n in peer_sizes[config].items()]
                if config != "stat" and "stat" in predictions:
                    interval = bootstrap_interval(headline, np.asarray(run["dev_predicted"]), sets["dev"][1],
                                                  versus=predictions["stat"], resamples=4000)
                    run["dev_minus_stat"] = {"estimate": interval.estimate, "low": interval.low,
                                             "high": interval.high, "level": interval.level}
                predictions[config] = np.asarray(run["dev_predicted"])
                document["runs"].append(run)
                done[(task, budget, config)] = run
                atomic_write(out, json.dumps(document, indent=1) + "\n")
                gap = run.get("dev_minus_stat")
                print(f"{task} {budget:.2f} {config:>24}: dev {headline} {run['dev'][headline]:.4f}"
                      + (f" (vs stat {gap['estimate']:+.4f} [{gap['low']:+.4f}, {gap['high']:+.4f}])" if gap else "")
                      + f"; held-out agreement {run['held_out']['agreement']:.4f}, "
                        f"KL {run['held_out']['kl_from_dense']:.4f}; prune {seconds:.0f} s", flush=True)
                del model
    print(json.dumps({"dense": document["dense"]}))


if __name__ == "__main__":
    main()
