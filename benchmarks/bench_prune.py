"""Wall time and peak memory of a full STAT prune on the CPU; prints one JSON document.

Cases:
  minilm     all-MiniLM-L6-v2 (bundled weights), 512 SST-2 training sentences (max length 128)
  bert-base  BERT-base shapes (12 layers, 12 heads, hidden 768, FFN 3072), random weights,
             512 sequences × 32 tokens of random ids

Usage: python benchmarks/bench_prune.py [--cases minilm,bert-base] [--mac-fraction 0.5]
Each case runs in a fresh subprocess so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time


def run_case(case: str, mac_fraction: float, backend: str) -> dict:
    import torch
    import transformers

    import statlab
    from statlab.calibration import calibration_batches

    transformers.logging.set_verbosity_error()
    if case == "minilm":
        from statlab.models.loading import load_model

        model, tokenizer = load_model("minilm")
        batches, calib = calibration_batches(tokenizer, "stsb", size=512)
    elif case == "bert-base":
        config = transformers.BertConfig()  # bert-base-uncased shapes
        torch.manual_seed(0)
        model = transformers.BertModel(config, add_pooling_layer=False).eval()
        g = torch.Generator().manual_seed(0)
        batches = [{"input_ids": torch.randint(1000, config.vocab_size, (64, 32), generator=g),
                    "attention_mask": torch.ones(64, 32, dtype=torch.long)} for _ in range(8)]
        calib = {"examples": 512, "tokens": 512 * 32, "source": "random ids"}
    else:
        raise ValueError(f"unknown case {case!r}")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    plan = statlab.prune(model, batches, mac_fraction=mac_fraction, backend=backend, seq_len=128, base=case)
    seconds = time.perf_counter() - start
    return {
        "case": case, "backend": backend, "mac_fraction": mac_fraction, "prune_seconds": round(seconds, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_prune_mib": round(rss_before / 1024, 1),
        "calibration": calib, "kept": plan.kept_fraction(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="minilm,bert-base")
    parser.add_argument("--mac-fraction", type=float, default=0.5)
    parser.add_argument("--backend", default="fast", choices=["fast", "reference"])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_case(args.one, args.mac_fraction, args.backend)))
        return
    import torch

    results = []
    for case in args.cases.split(","):
        out = subprocess.run([sys.executable, __file__, "--one", case, "--mac-fraction", str(args.mac_fraction),
                              "--backend", args.backend], capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    machine = {"cpus": __import__("os").cpu_count(), "torch_threads": torch.get_num_threads(),
               "torch": torch.__version__, "python": platform.python_version(), "processor": platform.machine()}
    print(json.dumps({"benchmark": "prune", "machine": machine, "results": results}, indent=1))


if __name__ == "__main__":
    main()
