"""Full STAT prune of a Llama-2-7B-shaped model on a GPU; prints one JSON document.

The model is ``LlamaForCausalLM`` built from Llama-2-7B's configuration (32
layers, hidden 4096, 32 heads, FFN 11008) with random bf16 weights; the
calibration is 128 sequences × 2048 random token ids (timing and memory do not
depend on the weights' values). For every sparsity: wall time, time per phase
(dense pass, sizes, propagated capture, selection = factorisations and
corrections, rewrite), peak GPU memory. Also times one bf16 forward over the
calibration tokens, for scale.

    python benchmarks/bench_llama7b.py --sparsities 0.2,0.5            # on a GPU
    python benchmarks/bench_llama7b.py --sparsities 0.2 --offload       # blocks in CPU memory (24 GiB GPUs)
    python benchmarks/bench_llama7b.py --shape tiny --device cpu        # smoke test of the script
"""

from __future__ import annotations

import argparse
import json
import platform
import time

SHAPES = {
    # meta-llama/Llama-2-7b-hf config.json
    "llama-2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                       rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256),
}


def build(shape: str, device, dtype):
    import torch
    import transformers

    config = transformers.LlamaConfig(**SHAPES[shape], attn_implementation="sdpa")
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = transformers.LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="llama-2-7b", choices=sorted(SHAPES))
    parser.add_argument("--sparsities", default="0.2,0.5")
    parser.add_argument("--sequences", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=8, help="sequences per forward")
    parser.add_argument("--precision", default="fp64", choices=["fp64", "fp32", "tf32"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--offload", action="store_true",
                        help="keep the blocks in CPU memory, each on the device only while it runs")
    args = parser.parse_args()

    import torch

    import statlab

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    g = torch.Generator().manual_seed(0)
    vocab = SHAPES[args.shape]["vocab_size"]
    ids = torch.randint(0, vocab, (args.sequences, args.seq_len), generator=g)
    home = torch.device("cpu") if args.offload else device  # where the model and the batches live
    batches = [{"input_ids": chunk.to(home)} for chunk in ids.split(args.batch)]
    results = []
    for sparsity in map(float, args.sparsities.split(",")):
        start = time.perf_counter()
        model = build(args.shape, home, torch.bfloat16)
        build_seconds = time.perf_counter() - start
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        forward_seconds = None
        if not results and not args.offload:  # one plain forward over the calibration tokens, for scale
            start = time.perf_counter()
            with torch.no_grad():
                for batch in batches:
                    model.model(**batch, use_cache=False)
            if cuda:
                torch.cuda.synchronize()
            forward_seconds = time.perf_counter() - start
            if cuda:
                torch.cuda.reset_peak_memory_stats()
        model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        start = time.perf_counter()
        plan = statlab.prune(model, batches, sparsity=sparsity, precision=args.precision, base=args.shape,
                             offload=args.offload, device=device if args.offload else None)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        results.append({
            "sparsity": sparsity, "prune_seconds": round(seconds, 2),
            "phase_seconds": {k: round(v, 2) for k, v in plan.meta["phase_seconds"].items()},
            "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
            "model_gib": round(model_bytes / 2**30, 2), "build_seconds": round(build_seconds, 1),
            "bf16_forward_seconds": None if forward_seconds is None else round(forward_seconds, 2),
            "kept": plan.kept_fraction(), "offload": plan.meta.get("offload"),
        })
        print(json.dumps(results[-1]), flush=True, file=__import__("sys").stderr)
        del model, plan
        if cuda:
            torch.cuda.empty_cache()
    machine = {"device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
               "torch": torch.__version__, "python": platform.python_version()}
    print(json.dumps({"benchmark": "llama7b-prune", "shape": args.shape, "calibration_tokens": ids.numel(),
                      "precision": args.precision, "machine": machine, "results": results}, indent=1))


if __name__ == "__main__":
    main()
