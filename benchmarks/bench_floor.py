"""STAT's prune against its floor, measured in one process: prune seconds / dense-pass seconds (JSON).

The floor of a propagated STAT prune is one dense pass for the sizes plus one
pruned pass for the selections. The unit is the dense pass as it should be:
one forward of the calibration batches through the blocks, accumulating the
Grams STAT's sizes read (the inputs of every attention and MLP output map, fp32,
as the driver's dense pass does). Each case measures that pass, then the full
``statlab.prune`` on a fresh copy of the same model and batches, and prints the
ratio to the median of three dense passes, with the driver's own phase times.

Cases:
  minilm     all-MiniLM-L6-v2 (bundled), 512 MRPC training sentences (max length 128)
  bert-base  BERT-base shapes, random weights, 512 sequences × 32 random ids
  smollm2    SmolLM2-135M (bundled GGUF), 128 WikiText-2 validation windows × 512 tokens (slow on a CPU)

Usage: python benchmarks/bench_floor.py [--cases minilm,bert-base] [--mac-fraction 0.5] [--precision fp64]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time


def case_inputs(case: str):
    """``(model, calibration batches, calibration record, MAC reference length)`` of a case."""
    import torch
    import transformers

    from statlab.calibration import calibration_batches
    from statlab.models.loading import load_model

    if case == "minilm":
        model, tokenizer = load_model("minilm", quiet=True)
        batches, calib = calibration_batches(tokenizer, "mrpc", size=512)
        return model, batches, calib, 128
    if case == "smollm2":
        model, tokenizer = load_model("smollm2", quiet=True)
        batches, calib = calibration_batches(tokenizer, "wikitext2", size=128, window=512)
        return model, batches, calib, 512
    if case == "bert-base":
        transformers.logging.set_verbosity_error()
        torch.manual_seed(0)
        config = transformers.BertConfig()  # bert-base-uncased shapes
        model = transformers.BertModel(config, add_pooling_layer=False).eval()
        g = torch.Generator().manual_seed(0)
        batches = [{"input_ids": torch.randint(1000, config.vocab_size, (64, 32), generator=g),
                    "attention_mask": torch.ones(64, 32, dtype=torch.long)} for _ in range(8)]
        return model, batches, {"examples": 512, "tokens": 512 * 32, "source": "random ids"}, 32
    raise ValueError(f"unknown case {case!r}")


def dense_pass_seconds(model, batches, repeats: int = 3) -> list:
    """Wall seconds of ``repeats`` captures of every output map's input Gram over ``batches`` (fp32, fast backend)."""
    from statlab.capture import capture
    from statlab.driver import _targets
    from statlab.inputs import eval_mode
    from statlab.models import get_adapter

    blocks = get_adapter(model).blocks(model)
    with eval_mode(model):
        capture(model, batches[:1], _targets(blocks, {"activations"}), precision="fp32", desc="warm-up")
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            capture(model, batches, _targets(blocks, {"activations"}), precision="fp32", desc="dense pass")
            seconds.append(round(time.perf_counter() - start, 2))
        return seconds


def run_case(case: str, mac_fraction: float, precision: str = "fp64") -> dict:
    import statlab

    model, batches, calib, seq_len = case_inputs(case)
    runs = dense_pass_seconds(model, batches)
    dense = sorted(runs)[len(runs) // 2]  # the median of three: one pass alone varies by 30% under load
    pruned = copy.deepcopy(model)
    start = time.perf_counter()
    plan = statlab.prune(pruned, batches, mac_fraction=mac_fraction, seq_len=seq_len, base=case, precision=precision)
    seconds = time.perf_counter() - start
    return {"case": case, "mac_fraction": mac_fraction, "precision": precision, "calibration": calib,
            "pruned_pass": plan.meta.get("pruned_pass"),
            "dense_pass_seconds": runs, "dense_pass_median": dense, "prune_seconds": round(seconds, 2),
            "prune_over_dense_pass": round(seconds / dense, 2),
            "phase_seconds": {k: round(v, 2) for k, v in plan.meta["phase_seconds"].items()}}


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="minilm,bert-base")
    parser.add_argument("--mac-fraction", type=float, default=0.5)
    parser.add_argument("--precision", default="fp64", choices=("fp64", "fp32"),
                        help="the prune's Gram accumulation (fp64: statlab's default on a CPU)")
    args = parser.parse_args()
    results = [run_case(case, args.mac_fraction, args.precision) for case in args.cases.split(",")]
    machine = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
               "python": platform.python_version(), "load_average_at_end": os.getloadavg()}
    print(json.dumps({"benchmark": "floor", "machine": machine, "results": results}, indent=1))


if __name__ == "__main__":
    main()
