"""The main job while the encoder pruning is being built: ID of real activations.

Runs the bundled all-MiniLM-L6-v2 encoder over unlabeled calibration sentences,
streams the Gram of every layer's MLP activations (``act(x W1^T + b1)``,
``N × 1536``, padding excluded), computes the weighted interpolative
decomposition of each (fast path) and prints how much of the activations the
first ``k`` neurons reconstruct. Layer 0 is cross-checked against the
reference (exact pivoted QR of the materialised matrix).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from statlab import fast
from statlab import reference as ref
from statlab.data import calibration_texts, tokenize_batches
from statlab.models.loading import load_model

FRACTIONS = (0.1, 0.25, 0.5, 0.75)


def capture_mlp_grams(model, batches):
    """Stream ``G_l = Z_l^T Z_l (1536, 1536)`` of every layer's MLP activations in one pass.

    Returns the list of :class:`statlab.fast.GramAccumulator` (one per layer) and,
    for the cross-check, the materialised activations of layer 0 ``(N, n)``.
    """
    layers = model.encoder.layer
    accs = [fast.GramAccumulator(l.intermediate.dense.out_features, name=f"layer {i} mlp") for i, l in enumerate(layers)]
    first_layer_rows = []
    mask = {}

    def hook(i):
        def record(module, inputs, output):  # output: (batch, seq, n)
            accs[i].update(output, mask["current"])
            if i == 0:
                first_layer_rows.append(output[mask["current"]].double())
        return record

    handles = [l.intermediate.register_forward_hook(hook(i)) for i, l in enumerate(layers)]
    try:
        with torch.inference_mode():
            for batch in batches:
                mask["current"] = batch["attention_mask"].bool()
                model(**batch)
    finally:
        for h in handles:
            h.remove()
    return accs, torch.cat(first_layer_rows)


def run(*, sentences: int = 256, seed: int = 0, out: str | Path = "out/demo") -> dict:
    """Decompose the MLP activations of MiniLM; print and return the error table."""
    out = Path(out)
    model, tokenizer = load_model("minilm")
    texts = calibration_texts("sst2", sentences, seed=seed)
    batches = tokenize_batches(tokenizer, texts, max_length=128, batch_size=32)
    start = time.perf_counter()
    accs, Z0 = capture_mlp_grams(model, batches)
    capture_s = time.perf_counter() - start
    tokens = accs[0].rows
    print(f"all-MiniLM-L6-v2: {len(texts)} SST-2 training sentences, {tokens} tokens "
          f"({tokens / accs[0].n:.1f} tokens per neuron); capture {capture_s:.1f} s")

    rows, curves = [], []
    start = time.perf_counter()
    for i, (acc, layer) in enumerate(zip(accs, model.encoder.layer)):
        weights = layer.output.dense.weight.detach().double().norm(dim=0)  # ||W2[:, j]||, (n,)
        full = fast.id_from_gram(acc.gram, None, weights=weights, rows=acc.rows)
        curves.append((full.errors / full.errors[0]).numpy())
        errs = [fast.gram_reconstruction_error(acc.gram, fast.id_from_gram(acc.gram, int(f * acc.n), weights=weights))
                for f in FRACTIONS]
        rows.append((i, acc.n, errs))
    id_s = time.perf_counter() - start

    print(f"\nrelative reconstruction error ||Z - Z[:, idx] coef|| / ||Z|| of the MLP activations (fast path, {id_s:.1f} s)")
    print("layer  neurons  " + "  ".join(f"keep {f:>4.0%}" for f in FRACTIONS))
    for i, n, errs in rows:
        print(f"{i:>5}  {n:>7}  " + "  ".join(f"{e:>9.4f}" for e in errs))

    k = accs[0].n // 2
    w0 = model.encoder.layer[0].output.dense.weight.detach().double().norm(dim=0)
    start = time.perf_counter()
    expected = ref.interpolative_decomposition(Z0.numpy(), k, weights=w0.numpy())
    ref_s = time.perf_counter() - start
    got = fast.id_from_gram(accs[0].gram, k, weights=w0)
    err_ref = ref.reconstruction_error(Z0.numpy(), expected)
    err_fast = fast.reconstruction_error(Z0, got)
    overlap = len(set(expected.idx.tolist()) & set(got.idx.tolist())) / k
    print(f"\nlayer 0, k = {k}: reference (SciPy pivoted QR, {ref_s:.1f} s) error {err_ref:.5f}; "
          f"fast (Gram route) error {err_fast:.5f}; kept sets overlap {overlap:.1%}")

    plot = _plot_curves(curves, out / "mlp_error_curves.png")
    print(f"error curves: {plot}")
    return {"tokens": tokens, "table": rows, "reference_error": err_ref, "fast_error": err_fast,
            "overlap": overlap, "plot": str(plot)}


def _plot_curves(curves, path: Path) -> Path:
    from statlab.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, curve in enumerate(curves):
        ax.semilogy(np.arange(len(curve)), curve, label=f"layer {i}")
    ax.set_xlabel("pivot j")
    ax.set_ylabel("|R[j, j]| / |R[0, 0]|")
    ax.set_title("MiniLM MLP activations: weighted pivot decay\n(statlab demo, SST-2 calibration)")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path
