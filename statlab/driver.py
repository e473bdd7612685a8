"""The pruning driver: ``prune(model, calibration, ...) -> PruningPlan`` (DESIGN §1.4, §2.1).

1. One pass over the dense model captures every block's context and MLP
   activations; each module's residual curve follows from its ID.
2. One threshold on the layer-weighted curves sets every module's size to meet
   the budget (MACs at a reference length, or parameters).
3. Bottom-up, each block is pruned at its size from activations recomputed
   through the already pruned blocks below (``propagate=True``), so each
   correction also absorbs the error arriving from below.
"""

from __future__ import annotations

import hashlib
import platform
import time

import numpy as np
import torch
from tqdm import tqdm

from statlab import fast
from statlab.reference import budget as budget_lib
from statlab.reference import heads as ref_heads
from statlab.reference import mlp as ref_mlp

from .capture import LayerReplay, capture
from .costs import module_costs
from .fast import heads as fast_heads
from .fast import mlp as fast_mlp
from .models import get_adapter
from .plan import PruningPlan, apply_attention, apply_mlp, config_hash, weights_fingerprint

METHODS = ("stat", "magnitude")
BACKENDS = ("fast", "reference")


class CalibrationError(ValueError):
    """Calibration data that is empty or too small for the model."""


def _check_budget(mac_fraction, sparsity):
    if (mac_fraction is None) == (sparsity is None):
        raise ValueError("give exactly one budget: mac_fraction=μ (MACs kept) or sparsity=s (parameters removed)")
    if mac_fraction is not None:
        if not 0 < mac_fraction <= 1:
            raise ValueError(f"mac_fraction must lie in (0, 1], got {mac_fraction}")
        return {"mac_fraction": float(mac_fraction)}, float(mac_fraction)
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must lie in [0, 1), got {sparsity}")
    return {"sparsity": float(sparsity)}, 1.0 - float(sparsity)


def _check_calibration(calibration, blocks, model):
    if not calibration:
        raise CalibrationError("the calibration set is empty: pass a list of tokenised batches")
    tokens = sum(int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel()
                 for b in calibration)
    widest = max(model.get_submodule(b.mlp_out).in_features for b in blocks)
    if tokens < widest:
        raise CalibrationError(
            f"{tokens} calibration tokens for modules of up to {widest} units: the activations would be "
            f"rank-deficient; use at least {widest} tokens (STAT uses several hundred examples)"
        )
    seq_len = max(int(b["input_ids"].shape[-1]) for b in calibration)
    digest = hashlib.sha256()
    for b in calibration:
        digest.update(b["input_ids"].cpu().numpy().tobytes())
    return tokens, seq_len, digest.hexdigest()


def _stats(recorder, backend):
    return recorder.gram if backend == "fast" else recorder.matrix


def _as_numpy(x):
    return x if x is None or isinstance(x, np.ndarray) else x.cpu().numpy()


def _prune_attention(stats, W_O, block, k, backend, ridge, curve=False):
    if backend == "fast":
        r = fast_heads.prune_heads(stats, W_O, block.unit_size, k, ridge=ridge, curve=curve)
        return r.idx.tolist(), r.weight, _as_numpy(r.residuals)
    r = ref_heads.prune_heads(stats, W_O.detach().cpu().double().numpy(), block.unit_size, k, ridge=ridge, curve=curve)
    return r.idx.tolist(), torch.from_numpy(r.weight), r.residuals


def _prune_mlp(stats, W2, k, backend, ridge, curve=False):
    if backend == "fast":
        r = fast_mlp.prune_mlp(stats, W2, k, ridge=ridge, curve=curve)
        return r.idx.tolist(), r.weight, _as_numpy(r.residuals)
    r = ref_mlp.prune_mlp(stats, W2.detach().cpu().double().numpy(), k, ridge=ridge, curve=curve)
    return r.idx.tolist(), torch.from_numpy(r.weight), r.residuals


def unit_energies(stats, W_out, unit_size, backend):
    """Output energy of every unit alone, ``||Z_u W_u^T||_F²``: shape (units,).

    ``sum_{a, b in u} (W_u^T W_u)_ab G_ab`` from the Gram's diagonal blocks
    (fast) or from the activations (reference); ``unit_size = 1`` for neurons.
    """
    if backend == "fast":
        G = stats.to(torch.float64)
        W = W_out.detach().to(device=G.device, dtype=torch.float64)
        units = G.shape[0] // unit_size
        blocks = G.reshape(units, unit_size, units, unit_size).diagonal(dim1=0, dim2=2)  # (u, u, units)
    else:
        Z = torch.from_numpy(stats)
        W = W_out.detach().to(dtype=torch.float64, device="cpu")
        units = Z.shape[1] // unit_size
        Zb = Z.reshape(Z.shape[0], units, unit_size)
        blocks = torch.einsum("nia,nib->abi", Zb, Zb)
    Wb = W.reshape(W.shape[0], units, unit_size)
    return (torch.einsum("oia,oib->abi", Wb, Wb) * blocks).sum(dim=(0, 1)).cpu().numpy()


def _layer_weights(adapter, blocks, model, dense, backend):
    """Error weight of every module, ordered (layer 0 attention, layer 0 MLP, layer 1 attention, ...).

    Post-LN encoders: STAT's depth weighting :func:`~statlab.reference.budget.post_ln_layer_weights`.
    Pre-LN decoders: each family's largest pivots over their exponential trend
    (:func:`~statlab.reference.budget.pre_ln_layer_weights`).
    """
    if adapter.norm_position == "post":
        return np.repeat(budget_lib.post_ln_layer_weights(len(blocks)), 2)
    pivots = {"attention": [], "mlp": []}
    for b in blocks:
        pivots["attention"].append(unit_energies(_stats(dense[f"layer {b.index} attention"], backend),
                                                 model.get_submodule(b.attn_out).weight, b.unit_size, backend).max())
        pivots["mlp"].append(unit_energies(_stats(dense[f"layer {b.index} mlp"], backend),
                                           model.get_submodule(b.mlp_out).weight, 1, backend).max())
    weights = {kind: budget_lib.pre_ln_layer_weights(np.sqrt(p)) for kind, p in pivots.items()}
    return np.stack([weights["attention"], weights["mlp"]], axis=1).reshape(-1)


def _magnitude_attention(model, block, k):
    """Units by ``||rows of W_Q, W_K, W_V||_F · ||columns of W_O||_F``; no correction."""
    W_O = model.get_submodule(block.attn_out).weight.detach().float()
    score = W_O.reshape(W_O.shape[0], block.units, -1).square().sum(dim=(0, 2))
    rows = sum(model.get_submodule(p).weight.detach().float().reshape(block.units, -1).square().sum(1)
               for p in block.attn_in)
    order = torch.argsort((score * rows).sqrt(), descending=True, stable=True)[:k]
    cols = (order[:, None] * block.unit_size + torch.arange(block.unit_size)).reshape(-1)
    return order.tolist(), W_O[:, cols].double()


def _magnitude_mlp(model, block, k):
    """Neurons by ``||W1[j]|| · ||W2[:, j]||``; no correction."""
    W2 = model.get_submodule(block.mlp_out).weight.detach().float()
    rows = sum(model.get_submodule(p).weight.detach().float().square().sum(1) for p in block.mlp_in)
    order = torch.argsort(W2.square().sum(0).sqrt() * rows.sqrt(), descending=True, stable=True)[:k]
    return order.tolist(), W2[:, order].double()


def prune(model, calibration, *, mac_fraction=None, sparsity=None, backend="fast", method="stat",
          seed=0, propagate=True, ridge=0.0, seq_len=None, base=None) -> PruningPlan:
    """Prune ``model`` in place to a budget and return the plan that reproduces it.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A supported model (see :func:`statlab.models.get_adapter`), dense.
    calibration : list of dict
        Tokenised unlabeled batches (``input_ids``, ``attention_mask``); padding is excluded.
    mac_fraction : float in (0, 1], optional
        μ: MACs of the pruned blocks / dense MACs at ``seq_len`` tokens (STAT's budget).
    sparsity : float in [0, 1), optional
        Fraction of attention + MLP parameters removed.
    backend : {"fast", "reference"}
        Streamed Grams on the model's device, or NumPy matrices through :mod:`statlab.reference`.
    method : {"stat", "magnitude"}
        STAT (ID + correction, sizes from error curves) or the weight-norm baseline
        (uniform sizes, no correction).
    seed : int
        Recorded in the plan; the methods here are deterministic.
    propagate : bool
        Recompute activations through the pruned blocks below (default) or use the
        dense pass for every block (the one-pass variant).
    ridge : float
        Relative ridge of the least-squares corrections.
    seq_len : int, optional
        Reference length of the MAC model; default the calibration's longest batch.
    base : str, optional
        Name or path that reloads the dense model (default ``model.name_or_path``).

    Returns
    -------
    PruningPlan
    """
    budget, fraction = _check_budget(mac_fraction, sparsity)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    adapter = get_adapter(model)
    blocks = adapter.blocks(model)
    tokens, calib_len, calib_hash = _check_calibration(calibration, blocks, model)
    seq_len = seq_len or calib_len
    meta = {
        "base": base or getattr(model, "name_or_path", None) or model.config._name_or_path,
        "model_type": model.config.model_type,
        "config_hash": config_hash(model),
        "fingerprint": weights_fingerprint(model, blocks),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "budget": budget, "method": method, "backend": backend, "seed": seed,
        "propagate": propagate, "ridge": ridge, "seq_len": seq_len,
        "calibration": {"hash": calib_hash, "batches": len(calibration), "tokens": tokens},
    }
    kind = "macs" if "mac_fraction" in budget else "params"
    costs = module_costs(model, adapter, blocks, kind, seq_len)
    start = time.perf_counter()

    flat_costs = [c for pair in costs for c in pair]
    curves = None
    if method == "stat":
        targets = {}
        for b in blocks:
            targets[f"layer {b.index} attention"] = b.attn_out
            targets[f"layer {b.index} mlp"] = b.mlp_out
        # With propagation the dense pass only draws the error curves that set the sizes:
        # fp32 Grams (floor ~3e-4 relative) are ample for that and cost half of fp64.
        dense = capture(model, calibration, targets, backend=backend, desc="dense pass",
                        precision="fp32" if propagate else "fp64")
        curves = []
        for b in blocks:
            W_O = model.get_submodule(b.attn_out).weight
            W2 = model.get_submodule(b.mlp_out).weight
            curves.append(_prune_attention(_stats(dense[f"layer {b.index} attention"], backend), W_O, b, b.units,
                                           backend, ridge, curve=True)[2])
            curves.append(_prune_mlp(_stats(dense[f"layer {b.index} mlp"], backend), W2, W2.shape[1], backend, ridge,
                                     curve=True)[2])
        layer_weights = _layer_weights(adapter, blocks, model, dense, backend)
        if propagate:
            del dense  # the propagated pass captures its own; free the dense Grams first
        sizes, tau = budget_lib.choose_sizes(curves, flat_costs, layer_weights, fraction)
        meta["threshold"] = tau
    else:
        sizes = budget_lib.uniform_sizes(flat_costs, fraction)

    layers, tensors = [], {}
    dtype = next(model.parameters()).dtype
    replay = LayerReplay(model, adapter.layers_path(model)) if propagate and method == "stat" else None

    def propagated(target, block, label):
        """Stats of ``target``'s input, computed through the pruned blocks below ``block``.

        Blocks up to ``replay.depth`` replay their cached outputs; the ones above
        run. When the block just below was pruned since, its outputs are cached
        on the way, so each pruned block runs once more, not once per block above.
        """
        below = block.index - 1
        record = below > replay.depth
        replay.install(replay.depth + 1)
        try:
            got = capture(model, calibration, {"x": target}, backend=backend, replay=replay, desc=label,
                          outputs_of=f"{layers_path}.{below}" if record else None)
        finally:
            replay.restore()
        if record:
            replay.outputs, replay.depth = got["outputs"], below
        return got["x"]

    layers_path = adapter.layers_path(model)
    for b in tqdm(blocks, desc=f"prune ({method})", leave=False, disable=None):
        k_attn, k_mlp = sizes[2 * b.index], sizes[2 * b.index + 1]
        n = model.get_submodule(b.mlp_out).in_features
        if method == "stat":
            stats = (propagated(b.attn_out, b, f"layer {b.index} attention") if replay
                     else dense[f"layer {b.index} attention"])
            attn_kept, W_O, _ = _prune_attention(_stats(stats, backend), model.get_submodule(b.attn_out).weight, b, k_attn, backend, ridge)
        else:
            attn_kept, W_O = _magnitude_attention(model, b, k_attn)
        W_O = W_O.to(dtype)
        apply_attention(model, adapter, b, attn_kept, W_O)
        if method == "stat":
            stats = (propagated(b.mlp_out, b, f"layer {b.index} mlp") if replay
                     else dense[f"layer {b.index} mlp"])
            mlp_kept, W2, _ = _prune_mlp(_stats(stats, backend), model.get_submodule(b.mlp_out).weight, k_mlp, backend, ridge)
        else:
            mlp_kept, W2 = _magnitude_mlp(model, b, k_mlp)
        W2 = W2.to(dtype)
        apply_mlp(model, b, mlp_kept, W2)
        tensors[f"layer.{b.index}.attn_out.weight"] = W_O.cpu()
        tensors[f"layer.{b.index}.mlp_out.weight"] = W2.cpu()
        layers.append({
            "index": b.index, "attn_units": b.units, "attn_kept": attn_kept, "mlp_units": n, "mlp_kept": mlp_kept,
            "attn_residuals": None if curves is None else [float(x) for x in curves[2 * b.index]],
            "mlp_residuals": None if curves is None else [float(x) for x in curves[2 * b.index + 1]],
        })

    kept_cost = budget_lib.total_cost(sizes, flat_costs)
    dense_cost = budget_lib.total_cost([c.units for c in flat_costs], flat_costs)
    meta.update({
        "kept_cost": kept_cost, "dense_cost": dense_cost, "cost_kind": kind,
        "prune_seconds": time.perf_counter() - start,
        "versions": _versions(),
    })
    return PruningPlan(meta, layers, tensors)


def _versions():
    import transformers

    import statlab

    return {"statlab": statlab.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": np.__version__, "python": platform.python_version()}
