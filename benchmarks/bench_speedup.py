"""Dense vs pruned speed, beside its Amdahl bound: prefill latency and throughput, decode tokens/s; one JSON document.

CPU (default): SmolLM2-135M (offline weights) pruned by STAT to ``--mac-fraction``
of its block MACs — from a saved plan (``--plan DIR``, e.g. made by
``statlab prune --model smollm2 --task wikitext2 --mac-fraction 0.5 --out DIR``)
or pruned here on ``--windows`` WikiText-2 validation windows. ``--shape minilm``:
all-MiniLM-L6-v2 pruned on 512 MRPC training sentences, timed on batches of
``--batch`` sequences of ``--prompt`` tokens (an encoder: no decode). GPU: the
Llama-2-7B shape with random bf16 weights (``--shape llama-2-7b --device cuda``),
pruned with ``method="magnitude"`` (speed depends on the shapes only; a STAT
plan of the same budget has other per-layer sizes).

The bound: pruning shrinks only the attention and MLP modules, so with ``t``
the dense forward's seconds and ``p`` the seconds spent inside those modules
(timed by forward hooks on one extra pass, the dense model's), a model keeping
a fraction ``f`` of their MACs can run no faster than ``t / (t - p + f·p)``
(Amdahl's law: embeddings, norms and the LM head do not shrink). The JSON
prints, per figure, the measured speedup, that bound, their ratio, and the
share ``p / t``; the same bound with ``f`` the kept fraction of the block
parameters (decoding one token at a time is bound by reading the weights,
not by MACs); and for the pruned model its own ``p`` and ``t - p`` over the
dense one's (how far the smaller products fall short of ``f``, and whether
the untouched rest really stayed the same). Shares are medians over the
repeats, as the figures are.

    python benchmarks/bench_speedup.py --mac-fraction 0.5
    python benchmarks/bench_speedup.py --shape minilm --mac-fraction 0.5
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


def module_seconds(model, device, run) -> dict:
    """``{"total": t, "blocks": p}``: wall seconds of ``run()`` and of the time inside the prunable modules.

    Forward hooks time each block's attention and MLP modules (with their
    output maps where these sit outside them, as in BERT); nested modules are
    not counted twice.
    """
    import torch

    from statlab.models import get_adapter

    paths = set()
    for b in get_adapter(model).blocks(model):
        paths |= {b.attention, b.mlp}
        paths |= {p for p, inside in ((b.attn_out, b.attention), (b.mlp_out, b.mlp)) if not p.startswith(inside + ".")}
    state = {"depth": 0, "start": 0.0, "inside": 0.0}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def pre(module, args):
        if state["depth"] == 0:
            sync()
            state["start"] = time.perf_counter()
        state["depth"] += 1

    def post(module, args, output):
        state["depth"] -= 1
        if state["depth"] == 0:
            sync()
            state["inside"] += time.perf_counter() - state["start"]

    handles = []
    for path in paths:
        module = model.get_submodule(path)
        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        sync()
        start = time.perf_counter()
        run()
        sync()
        total = time.perf_counter() - start
    finally:
        for h in handles:
            h.remove()
    return {"total": total, "blocks": state["inside"]}


def amdahl(dense_share: dict, pruned_share: dict, macs_fraction: float, params_fraction: float) -> dict:
    """The bounds ``t / (t - p + f·p)`` of one figure, and where the pruned model's time went.

    ``f``: the kept fraction of the block MACs (compute-bound work: prefill),
    and of the block parameters (weight-bandwidth-bound work: decoding one
    token at a time reads every weight once per token).
    """
    t, p = dense_share["total"], dense_share["blocks"]
    return {"blocks_share_of_dense_time": round(p / t, 3),
            "bound": round(t / (t - p + macs_fraction * p), 3),
            "bound_by_parameters": round(t / (t - p + params_fraction * p), 3),
            "pruned_blocks_time_over_dense": round(pruned_share["blocks"] / p, 3),
            "pruned_rest_time_over_dense": round((pruned_share["total"] - pruned_share["blocks"]) / (t - p), 3)}


def block_parameters(model) -> int:
    """Parameters of the attention and MLP maps of every block (what pruning shrinks)."""
    from statlab.models import get_adapter

    paths = [p for b in get_adapter(model).blocks(model) for p in (*b.attn_in, b.attn_out, *b.mlp_in, b.mlp_out)]
    return sum(t.numel() for p in paths for t in model.get_submodule(p).parameters())


def speed(model, vocab, device, *, prompt, batch, new_tokens, repeats):
    """Prefill (batch 1 and ``batch``) and, for a decoder, greedy decode of ``new_tokens`` after a ``prompt``-token prompt.

    ``(figures, {figure: module_seconds of one more run})``.
    """
    import torch

    from statlab.models import get_adapter

    g = torch.Generator().manual_seed(0)
    one = torch.randint(0, vocab, (1, prompt), generator=g).to(device)
    many = torch.randint(0, vocab, (batch, prompt), generator=g).to(device)
    decoder = get_adapter(model).causal_lm
    options = {"use_cache": False} if decoder else {}
    runs = {"prefill_ms_batch1": lambda: model(input_ids=one, **options),
            "prefill_tokens_per_s": lambda: model(input_ids=many, **options)}
    if decoder:
        runs["decode_tokens_per_s"] = lambda: model.generate(one, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                                             do_sample=False, pad_token_id=0)
    with torch.inference_mode():
        seconds = {k: timed(run, device, repeats if k != "decode_tokens_per_s" else max(1, repeats // 2))
                   for k, run in runs.items()}
        shares = {}
        for k, run in runs.items():  # medians over the repeats, as the figures
            seen = [module_seconds(model, device, run) for _ in range(repeats if k != "decode_tokens_per_s"
                                                                         else max(1, repeats // 2))]
            shares[k] = {part: statistics.median(s[part] for s in seen) for part in ("total", "blocks")}
    work = {"prefill_ms_batch1": 1e3, "prefill_tokens_per_s": batch * prompt, "decode_tokens_per_s": new_tokens}
    figures = {k: round(work[k] * seconds[k] if k.endswith("_ms_batch1") else work[k] / seconds[k], 2)
               for k in seconds}
    return figures, shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="smollm2", help="smollm2 or minilm (real weights), or llama-2-7b (random bf16)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--mac-fraction", type=float)
    budget.add_argument("--sparsity", type=float)
    parser.add_argument("--plan", help="a saved plan of smollm2 to apply instead of pruning here")
    parser.add_argument("--windows", type=int, default=16, help="calibration windows when pruning here")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prompt", type=int, help="tokens per sequence (default 512; minilm 128)")
    parser.add_argument("--batch", type=int, help="sequences of the batched prefill (default 4; minilm 32)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.mac_fraction is None and args.sparsity is None and args.plan is None:
        args.mac_fraction = 0.5
    encoder = args.shape == "minilm"
    args.prompt = args.prompt or (128 if encoder else 512)
    args.batch = args.batch or (32 if encoder else 4)

    import torch
    import transformers

    import statlab
    from statlab.costs import block_macs
    from statlab.evaluate import count_parameters

    transformers.logging.set_verbosity_error()
    device = torch.device(args.device)
    budget = {"mac_fraction": args.mac_fraction} if args.mac_fraction is not None else {"sparsity": args.sparsity}
    if args.shape == "minilm":
        from statlab.calibration import calibration_batches
        from statlab.models.loading import load_model

        dense, tokenizer = load_model("minilm", quiet=True)
        dense = dense.to(device)
        pruned = copy.deepcopy(dense)
        batches, _ = calibration_batches(tokenizer, "mrpc", size=512)
        plan = statlab.prune(pruned, batches, seq_len=args.prompt, base="minilm", **budget)
        method = plan.meta["method"]
    elif args.shape == "smollm2":
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
    dense_block_params = block_parameters(dense)
    dense_speed, dense_shares = speed(dense, vocab, device, **options)
    if pruned is dense:
        g = torch.Generator().manual_seed(1)
        calib = [{"input_ids": torch.randint(0, vocab, (1, args.prompt), generator=g).to(device)}]
        statlab.prune(pruned, calib, method="magnitude", seq_len=args.prompt, base=args.shape, **budget)
    pruned_speed, pruned_shares = speed(pruned, vocab, device, **options)
    macs_fraction = block_macs(pruned, args.prompt) / dense_macs
    params_fraction = block_parameters(pruned) / dense_block_params
    speedup = {k: round((dense_speed[k] / pruned_speed[k]) if k.endswith("_ms_batch1")
                        else (pruned_speed[k] / dense_speed[k]), 3) for k in dense_speed}
    bounds = {k: amdahl(dense_shares[k], pruned_shares[k], macs_fraction, params_fraction) for k in dense_speed}
    for k, b in bounds.items():
        b["measured_speedup"] = speedup[k]
        b["measured_over_bound"] = round(speedup[k] / b["bound"], 3)
    result = {
        "benchmark": "speedup", "shape": args.shape, "method": method, "budget": budget, "plan": args.plan,
        "macs_fraction": round(macs_fraction, 4), "block_params_fraction": round(params_fraction, 4),
        "params_fraction": round(count_parameters(pruned) / dense_params, 4),
        "dense": dense_speed, "pruned": pruned_speed,
        "speedup": speedup, "amdahl": bounds,
        "settings": options,
        "machine": {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version()},
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
