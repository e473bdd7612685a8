"""Cost of the plan fingerprint (a SHA-256 of every tensor, one digest per part); prints one JSON document.

The fingerprint is computed once when a model is pruned and once when a plan is
applied. This measures it on the bundled models against the time to load them.

Usage: python benchmarks/bench_fingerprint.py [--models minilm,smollm2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time


def measure(name: str, repeats: int) -> dict:
    import torch

    from statlab.models.loading import load_model
    from statlab.plan import weights_fingerprint

    start = time.perf_counter()
    model, _ = load_model(name, quiet=True)
    load_seconds = time.perf_counter() - start
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        parts = weights_fingerprint(model)
        seconds.append(time.perf_counter() - start)
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    median = statistics.median(seconds)
    return {"model": name, "parts": len(parts), "bytes": nbytes, "seconds": seconds, "median_seconds": median,
            "gb_per_second": nbytes / median / 1e9, "load_seconds": load_seconds,
            "dtype": str(next(model.parameters()).dtype), "torch_threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm,smollm2")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = [measure(name, args.repeats) for name in args.models.split(",")]
    print(json.dumps({"machine": platform.processor() or platform.machine(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
