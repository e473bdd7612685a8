"""The main job while the encoder pruning is being built: ID of real activations.

Runs the bundled all-MiniLM-L6-v2 encoder (or any model of a supported
family) over unlabeled calibration sentences, streams the Gram of every
layer's MLP activations (the input of its MLP output map: ``act(x W1^T + b1)``,
``N × 1536`` on MiniLM, padding excluded), computes the weighted interpolative
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
from statlab.capture import capture
from statlab.data import calibration_texts, tokenize_batches
from statlab.models import get_adapter
from statlab.models.loading import load_model

FRACTIONS = (0.1, 0.25, 0.5, 0.75)
_NAMES = {"minilm": ("all-MiniLM-L6-v2", "MiniLM")}  # short name -> (in the report, in the plot title)


def capture_mlp_grams(model, batches):
    """Stream ``G_l = Z_l^T Z_l (n, n)`` of every layer's MLP activations in one pass.

    ``Z_l`` is the input of the layer's MLP output map (the adapter's
    ``mlp_out``), padding excluded. Returns the list of
    :class:`statlab.fast.GramAccumulator` (one per layer) and, for the
    cross-check, the materialised activations of layer 0 ``(N, n)`` in fp64
    (a second pass that stops at layer 0).
    """
    blocks = get_adapter(model).blocks(model)
    grams = capture(model, batches, {f"layer {b.index} mlp": b.mlp_out for b in blocks}, desc="Grams")
    first = capture(model, batches, {"layer 0 mlp": blocks[0].mlp_out}, backend="reference", desc="layer 0")
    return [grams[f"layer {b.index} mlp"] for b in blocks], torch.from_numpy(first["layer 0 mlp"].matrix)


def run(*, sentences: int = 256, seed: int = 0, out: str | Path = "out/demo", model_name: str = "minilm",
        say=print) -> dict:
    """Decompose the MLP activations of ``model_name`` (any supported family); print and return the error table."""
    out = Path(out)
    name, title = _NAMES.get(model_name, (model_name, model_name))
    model, tokenizer = load_model(model_name)
    mlp_out = [model.get_submodule(b.mlp_out) for b in get_adapter(model).blocks(model)]
    texts = calibration_texts("sst2", sentences, seed=seed)
    batches = tokenize_batches(tokenizer, texts, max_length=128, batch_size=32)
    start = time.perf_counter()
    accs, Z0 = capture_mlp_grams(model, batches)
    capture_s = time.perf_counter() - start
    tokens = accs[0].rows
    say(f"{name}: {len(texts)} SST-2 training sentences, {tokens} tokens "
          f"({tokens / accs[0].n:.1f} tokens per neuron); capture {capture_s:.1f} s")

    rows, curves = [], []
    start = time.perf_counter()
    for i, (acc, w2) in enumerate(zip(accs, mlp_out)):
        weights = w2.weight.detach().double().norm(dim=0)  # ||W2[:, j]||, (n,)
        full = fast.id_from_gram(acc.gram, None, weights=weights, rows=acc.rows)
        curves.append((full.errors / full.errors[0]).numpy())
        errs = [fast.gram_reconstruction_error(acc.gram, fast.id_from_gram(acc.gram, int(f * acc.n), weights=weights))
                for f in FRACTIONS]
        rows.append((i, acc.n, errs))
    id_s = time.perf_counter() - start

    say(f"\nrelative reconstruction error ||Z - Z[:, idx] coef|| / ||Z|| of the MLP activations (fast path, {id_s:.1f} s)")
    say("layer  neurons  " + "  ".join(f"keep {f:>4.0%}" for f in FRACTIONS))
    for i, n, errs in rows:
        say(f"{i:>5}  {n:>7}  " + "  ".join(f"{e:>9.4f}" for e in errs))

    k = accs[0].n // 2
    w0 = mlp_out[0].weight.detach().double().norm(dim=0)
    start = time.perf_counter()
    expected = ref.interpolative_decomposition(Z0.numpy(), k, weights=w0.numpy())
    ref_s = time.perf_counter() - start
    got = fast.id_from_gram(accs[0].gram, k, weights=w0)
    err_ref = ref.reconstruction_error(Z0.numpy(), expected)
    err_fast = fast.reconstruction_error(Z0, got)
    overlap = len(set(expected.idx.tolist()) & set(got.idx.tolist())) / k
    say(f"\nlayer 0, k = {k}: reference (SciPy pivoted QR, {ref_s:.1f} s) error {err_ref:.5f}; "
          f"fast (Gram route) error {err_fast:.5f}; kept sets overlap {overlap:.1%}")

    plot = _plot_curves(curves, out / "mlp_error_curves.png", title)
    say(f"error curves: {plot}")
    return {"tokens": tokens, "table": rows, "reference_error": err_ref, "fast_error": err_fast,
            "overlap": overlap, "plot": str(plot)}


def _plot_curves(curves, path: Path, title: str) -> Path:
    from statlab.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, curve in enumerate(curves):
        ax.semilogy(np.arange(len(curve)), curve, label=f"layer {i}")
    ax.set_xlabel("pivot j")
    ax.set_ylabel("|R[j, j]| / |R[0, 0]|")
    ax.set_title(f"{title} MLP activations: weighted pivot decay\n(statlab demo, SST-2 calibration)")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path
