"""Dense vs pruned speed of a decoder: prefill latency and throughput, decode tokens/s; one JSON document.

CPU (default): SmolLM2-135M (offline weights) pruned by STAT to ``--mac-fraction``
of its block MACs — from a saved plan (``--plan DIR``, e.g. made by
``statlab prune --model smollm2 --task wikitext2 --mac-fraction 0.5 --out DIR``)
or pruned here on ``--windows`` WikiText-2 validation windows. GPU: the
Llama-2-7B shape with random bf16 weights (``--shape llama-2-7b --device cuda``),
pruned with ``method="magnitude"`` (speed depends on the shapes only; a STAT
plan of the same budget has other per-layer sizes).

    python benchmarks/bench_speedup.py --mac-fraction 0.5
    python benchmarks/bench_speedup.py --shape llama-2-7b --device cuda --sparsity 0.5
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time


def timed(fn, device, repeats, warmup=1):
    import torch

    times = []
    for run in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if run >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def speed(model, vocab, device, *, prompt, batch, new_tokens, repeats):
    """Prefill (batch 1 and ``batch``) and greedy decode of ``new_tokens`` after a ``prompt``-token prompt."""
    import torch

    g = torch.Generator().manual_seed(0)
    one = torch.randint(0, vocab, (1, prompt), generator=g).to(device)
    many = torch.randint(0, vocab, (batch, prompt), generator=g).to(device)
    with torch.inference_mode():
        prefill_1 = timed(lambda: model(input_ids=one, use_cache=False), device, repeats)
        prefill_b = timed(lambda: model(input_ids=many, use_cache=False), device, repeats)
        decode = timed(lambda: model.generate(one, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                              do_sample=False, pad_token_id=0), device, max(1, repeats // 2))
    return {"prefill_ms_batch1": round(1e3 * prefill_1, 2),
            "prefill_tokens_per_s": round(batch * prompt / prefill_b, 1),
            "decode_tokens_per_s": round(new_tokens / decode, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="smollm2", help="smollm2 (real weights) or llama-2-7b (random bf16)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--mac-fraction", type=float)
    budget.add_argument("--sparsity", type=float)
    parser.add_argument("--plan", help="a saved plan of smollm2 to apply instead of pruning here")
    parser.add_argument("--windows", type=int, default=16, help="calibration windows when pruning here")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.mac_fraction is None and args.sparsity is None and args.plan is None:
        args.mac_fraction = 0.5

    import torch
    import transformers

    import statlab
    from statlab.costs import block_macs
    from statlab.evaluate import count_parameters

    transformers.logging.set_verbosity_error()
    device = torch.device(args.device)
    budget = {"mac_fraction": args.mac_fraction} if args.mac_fraction is not None else {"sparsity": args.sparsity}
    if args.shape == "smollm2":
        from statlab.calibration import calibration_batches
        from statlab.models.loading import load_model

        dense, tokenizer = load_model("smollm2")
        dense = dense.to(device)
        pruned = copy.deepcopy(dense)
        if args.plan:
            plan = statlab.PruningPlan.load(args.plan)
            plan.apply(pruned)
        else:
            batches, _ = calibration_batches(tokenizer, "wikitext2", size=args.windows, window=args.prompt)
            plan = statlab.prune(pruned, batches, seq_len=args.prompt, base="smollm2", **budget)
        method = plan.meta["method"]
    else:
        import importlib.util
        import pathlib

        path = pathlib.Path(__file__).with_name("bench_llama7b.py")
        spec = importlib.util.spec_from_file_location("bench_llama7b", path)
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        dense = bench.build(args.shape, device, torch.bfloat16)
        pruned = dense  # magnitude pruning needs no copy of the dense weights: measure dense first
        method = "magnitude"
    vocab = dense.config.vocab_size
    options = dict(prompt=args.prompt, batch=args.batch, new_tokens=args.new_tokens, repeats=args.repeats)
    dense_macs, dense_params = block_macs(dense, args.prompt), count_parameters(dense)
    dense_speed = speed(dense, vocab, device, **options)
    if pruned is dense:
        g = torch.Generator().manual_seed(1)
        calib = [{"input_ids": torch.randint(0, vocab, (1, args.prompt), generator=g).to(device)}]
        statlab.prune(pruned, calib, method="magnitude", seq_len=args.prompt, base=args.shape, **budget)
    pruned_speed = speed(pruned, vocab, device, **options)
    result = {
        "benchmark": "speedup", "shape": args.shape, "method": method, "budget": budget, "plan": args.plan,
        "macs_fraction": round(block_macs(pruned, args.prompt) / dense_macs, 4),
        "params_fraction": round(count_parameters(pruned) / dense_params, 4),
        "dense": dense_speed, "pruned": pruned_speed,
        "speedup": {k: round((dense_speed[k] / pruned_speed[k]) if k.endswith("_ms_batch1")
                             else (pruned_speed[k] / dense_speed[k]), 3) for k in dense_speed},
        "settings": options,
        "machine": {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version()},
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
