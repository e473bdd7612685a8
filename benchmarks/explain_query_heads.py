"""Why query heads as units lose on SmolLM2 where they do: every layer's kept attention, per setting.

Prunes SmolLM2 with whole KV groups and with query heads as units, with and
without the correction, under the settings where the two differ most (the
proportional split at 20% sparsity, the one threshold at 50%), and records each
plan's attention size per layer (query heads kept, of 9) beside the perplexity
on WikiText-2 validation windows calibration did not draw. Calibration and
evaluation as the tune runs of ``benchmarks/results/tune_attention_units_smollm2*.json``.

    python benchmarks/explain_query_heads.py > benchmarks/results/explain_query_heads.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--ridge", type=float, default=0.01)
    args = parser.parse_args()

    import torch
    import transformers

    import statlab
    from statlab.calibration import calibration_batches
    from statlab.data import held_out_windows
    from statlab.evaluate import perplexity
    from statlab.methods import Stat
    from statlab.models.loading import load_model

    transformers.logging.set_verbosity_error()
    dense, tokenizer = load_model(args.model)
    batches, calib = calibration_batches(tokenizer, "wikitext2", size=args.windows, window=args.window)
    held_out = held_out_windows(tokenizer, batches, window=args.window, max_tokens=args.max_tokens)
    settings = [(0.2, "proportional", correction) for correction in (True, False)] + [(0.5, None, True)]
    runs = []
    for sparsity, split, correction in settings:
        for units in ("groups", "heads"):
            model = copy.deepcopy(dense)
            method = Stat(ridge=args.ridge, split=split, correction=correction, attention_units=units)
            start = time.perf_counter()
            plan = statlab.prune(model, batches, sparsity=sparsity, method=method, seq_len=args.window,
                                 base=args.model)
            per_group = 1 if units == "heads" else model.config.num_attention_heads // model.config.num_key_value_heads
            run = {"sparsity": sparsity, "split": split, "correction": correction, "attention_units": units,
                   "method": plan.meta["method"], "prune_seconds": round(time.perf_counter() - start, 1),
                   "query_heads_kept": [len(layer["attn_kept"]) * per_group for layer in plan.layers],
                   "neurons_kept": [len(layer["mlp_kept"]) for layer in plan.layers],
                   "perplexity": perplexity(model, held_out, disable_progress=True)["perplexity"]}
            print(json.dumps(run), file=sys.stderr, flush=True)
            runs.append(run)
    print(json.dumps({"settings": vars(args), "calibration": calib,
                      "dense": perplexity(dense, held_out, disable_progress=True),
                      "machine": {"torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                                  "python": platform.python_version()},
                      "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
