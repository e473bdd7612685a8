"""Why STAT is not first on SmolLM2 in the compare tables: allocation, calibration and fit, on held-out windows.

``statlab compare --model smollm2 --task wikitext2`` (16 calibration windows of 512 tokens)
puts Kwon et al., FLAP or SlimLLM ahead of STAT at some MAC budgets. For each budget
this script prunes SmolLM2 with STAT, the leading peers (their plans kept), STAT at
each peer's per-module sizes (``Stat(sizes=plan.module_sizes())``), and STAT with
more calibration windows, a ridge, or an intercept, and scores each on

- WikiText-2 validation windows that no calibration draw holds
  (:func:`statlab.data.held_out_windows`): perplexity and the mean per-token KL
  divergence from the dense model's next-token distribution,
- the first test windows the compare table reports (perplexity only), to tie the
  measurement to the reported figure.

Nothing here chooses a default. Writes one JSON document to ``--out``, rewritten
after every run and resumed from.

Usage: python benchmarks/explain_smollm2.py [--budgets 0.8,0.5] [--configs stat,kwon,"stat @ kwon sizes",...]
           [--windows 16] [--max-tokens 4096] [--out benchmarks/results/explain_smollm2.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import statlab
from explain_task_models import calibration_size_of, method_of
from statlab.calibration import calibration_batches
from statlab.data import held_out_windows, token_windows
from statlab.evaluate import perplexity
from statlab.files import atomic_write
from statlab.models.loading import load_model
from statlab.records import ModuleKey

CONFIGS = ("stat", "kwon", "slimllm", "stat @ kwon sizes", "stat @ slimllm sizes", "stat (intercept)",
           "stat (ridge 0.01)", "stat (64 windows)")
PEERS = ("kwon", "slimllm", "flap", "goa")


def next_token_log_probs(model, windows: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of every next token: (W, T - 1, V) fp32, one window at a time."""
    parts = []
    with torch.inference_mode():
        for window in windows.split(1):
            parts.append(torch.log_softmax(model(input_ids=window, use_cache=False).logits[:, :-1].float(), -1))
    return torch.cat(parts)


def kl_from(dense_log_probs: torch.Tensor, model, windows: torch.Tensor) -> float:
    """Mean over predicted tokens of KL(dense || model)."""
    total, count = 0.0, 0
    with torch.inference_mode():
        for q_log, window in zip(dense_log_probs.split(1), windows.split(1)):
            p_log = torch.log_softmax(model(input_ids=window, use_cache=False).logits[:, :-1].float(), -1)
            total += float(F.kl_div(p_log, q_log, log_target=True, reduction="sum"))
            count += q_log.shape[1]
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--budgets", default="0.8,0.5")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--windows", type=int, default=16, help="calibration windows (the compare tables': 16)")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=4096, help="tokens of each evaluation set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/explain_smollm2.json")
    args = parser.parse_args()
    configs = args.configs.split(",")
    out = Path(args.out)
    document = json.loads(out.read_text()) if out.exists() else {"runs": []}
    document.update({"machine": platform.processor() or platform.machine(), "settings": vars(args)})
    done = {(r["budget"], r["config"]): r for r in document["runs"]}
    dense, tokenizer = load_model(args.model, quiet=True)
    sizes = sorted({calibration_size_of(c, args.windows) for c in configs})
    calibration = {n: calibration_batches(tokenizer, "wikitext2", size=n, window=args.window, seed=args.seed)[0]
                   for n in sizes}
    # windows of any draw (the larger one too) are held out from every run's evaluation
    held = held_out_windows(tokenizer, [b for n in sizes for b in calibration[n]], window=args.window,
                            max_tokens=args.max_tokens)
    test = token_windows(tokenizer, "test", window=args.window, max_tokens=args.max_tokens)
    dense_log_probs = next_token_log_probs(dense, held)
    document["dense"] = {"held_out": perplexity(dense, held, disable_progress=True),
                         "test": perplexity(dense, test, disable_progress=True)}
    document["calibration_tokens"] = {str(n): sum(int(b["input_ids"].numel()) for b in calibration[n])
                                      for n in sizes}
    for budget in (float(b) for b in args.budgets.split(",")):
        peer_sizes = {}
        for config in configs:
            saved = done.get((budget, config))
            if saved is not None:
                if "sizes" in saved:
                    peer_sizes[config] = {ModuleKey(layer, kind): n for layer, kind, n in saved["sizes"]}
                continue
            model = copy.deepcopy(dense)
            start = time.perf_counter()
            plan = statlab.prune(model, calibration[calibration_size_of(config, args.windows)],
                                 mac_fraction=budget, method=method_of(config, peer_sizes), seed=args.seed,
                                 seq_len=args.window, base=args.model)
            seconds = time.perf_counter() - start
            run = {"budget": budget, "config": config, "prune_seconds": round(seconds, 1),
                   "kept": plan.kept_fraction(), "kept_cost": plan.meta["kept_cost"] / plan.meta["dense_cost"],
                   "held_out": {**perplexity(model, held, disable_progress=True),
                                "kl_from_dense": kl_from(dense_log_probs, model, held)},
                   "test": perplexity(model, test, disable_progress=True)}
            if config in PEERS:
                peer_sizes[config] = plan.module_sizes()
                run["sizes"] = [[k.layer, k.kind, n] for k, n in peer_sizes[config].items()]
            document["runs"].append(run)
            done[(budget, config)] = run
            atomic_write(out, json.dumps(document, indent=1) + "\n")
            print(f"{budget:.2f} {config:>22}: held-out perplexity {run['held_out']['perplexity']:.2f}, "
                  f"KL {run['held_out']['kl_from_dense']:.4f}; test {run['test']['perplexity']:.2f}; "
                  f"kept heads {run['kept']['heads']:.3f} neurons {run['kept']['neurons']:.3f}; prune {seconds:.0f} s",
                  flush=True)
            del model
    print(json.dumps({"dense": document["dense"]}))


if __name__ == "__main__":
    main()
