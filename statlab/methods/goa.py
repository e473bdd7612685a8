"""GOA — Greedy Output Approximation (Li, Dong, Lei 2024; seed 003, arXiv 2407.19126).

Every attention block and every MLP is a *depth-2 module* (seed 003 §3.1.2):
level 1 (``W_Q, W_K, W_V`` / ``W1`` or ``gate, up``) produces the inner
channels, level 2 (``W_O`` / ``W2`` or ``down``) consumes them, and pruning an
inner channel removes a row of level 1 and the matching column of level 2 —
exactly the units of our driver. GOA then

1. scores inner channels by their **second moment** at the module output
   (seed 003 Eq. 2–3): with ``f(x) = B σ(A x)`` and ``σ`` taken as linear
   (times ½ for ReLU/GELU/SiLU),
   ``M_i = Σ_j E[(B_ji σ(A_i x))²] = ‖B_i‖² · A_iᵀ Σ_X A_i`` with
   ``Σ_X = E[x xᵀ]`` the (uncentred) second moment of the module input;
2. for attention, first removes heads that are **redundant**: heads whose
   attention maps are close in Jensen–Shannon distance (seed 003 Eq. 1) form
   pairs, and Alg. 1 lists one head of every such pair as a pruning candidate;
3. prunes modules one after the other, from the bottom, and **reconstructs the
   weights by least squares** so that each module's output on the inputs that
   arrive through the already pruned modules matches the *dense* model's
   output (seed 003 §3.3, Alg. 2–4).

How this maps onto the :class:`~statlab.methods.base.PruningMethod` protocol,
and every choice made where the paper is silent or our protocol forces a
deviation:

- **Attention score** (seed 003 App. B §7.1): a head is a depth-2 module
  ``(X̂ W_V,h) W_O,h`` whose input ``X̂ = softmax(…) X`` is the attention-mixed
  input; for its ``d_h`` inner channels ``c``, ``A_cᵀ Σ_X̂ A_c = E[ctx_c²]`` is
  the second moment of the context (input of ``W_O``), read off the diagonal
  of the captured context Gram. A unit's score sums Eq. 3 over its channels; a
  GQA unit (one K/V head and its ``heads_per_unit`` query heads) sums over all
  its query heads' channels. The ½ of a softmax "activation" is a constant and
  is left out.
- **MLP score**: BERT/DistilBERT ``W2 σ(W1 x + b1)``: Eq. 3 with the bias
  folded into the input (``x → [x, 1]``), i.e.
  ``M_i = ½ ‖W2[:, i]‖² · E[(W1_i x + b1_i)²]``. Gated Llama MLPs
  ``W_D (W_U x · σ(W_G x))`` (App. B §7.2): the product of the metrics of the
  two depth-2 modules ``W_D W_U x`` and ``W_D σ(W_G x)``,
  ``M_i = (‖D_i‖² U_iᵀ Σ_X U_i) · (½ ‖D_i‖² G_iᵀ Σ_X G_i)``.
  ``Σ_X`` is the Gram of the module input (``"inputs"`` in ``needs``) divided by the
  number of tokens: the paper's ``E[x xᵀ]``, padding excluded.
- **Head grouping** (Alg. 1): ``D_ij`` is the mean over all non-padded query
  positions of the JS *distance* (square root of the JS divergence, natural
  logarithm) between the attention rows of heads ``i`` and ``j``, measured once
  on the dense model in :meth:`Goa.prepare` (eager attention is switched on, by the adapter, for
  that pass only). For GQA units ``D`` between two units is the mean over all
  pairs of their query heads. Alg. 1 is followed literally (pairs scanned row
  by row; ``i`` joins the candidates when ``D_ij < τ`` and neither ``i`` nor
  ``j`` is a candidate yet). The paper sets no rule for combining the
  candidates with a fixed size ``k``; here the candidates are removed first,
  least important first, and the remaining removals go to the least important
  other units ("prioritize removing similar heads before eliminating those with
  the least importance score", §3.2.2). ``τ = 0.2`` (Fig. 3; Table 2 uses
  0.16 and 0.19); ``tau=None`` turns the grouping off. MLPs have no grouping.
- **Recovery** (Alg. 2–4): Alg. 2 re-fits level 1 (``W̄1 = (X̂ᵀX̂)⁻¹X̂ᵀY1``)
  and then level 2 (``W̄2 = (X̂2ᵀX̂2)⁻¹X̂2ᵀY2``) against the *dense* outputs
  ``Y1, Y2``. **Level 1** is re-fitted with ``refit_inputs=True`` (off by
  default): every input map on the cross moment ``x'ᵀ(x − x')`` of the pruned
  and dense module inputs from the paired passes (the driver captures only
  ``x'ᵀx'``), then the pruned stream runs again through the re-fitted maps so
  that level 2 is fitted on its new input (:meth:`Goa._refit_level_one`); the
  re-fitted rows of the kept units go back as the Selection's ``w_in_rows``
  and the plan stores them. The biases of level 1 are kept (Alg. 2 fits
  weights only). The level-2 re-fit is done exactly:
  ``W̄2ᵀ = (Z'_Kᵀ Z'_K + λ)⁻¹ Z'_Kᵀ Z W2ᵀ`` with ``Z'`` the input of the output
  map computed through the already pruned modules (the driver's propagated
  statistics) and ``Z`` the same activation in the dense model. The driver
  does not capture the cross moment ``Z'ᵀ Z``, so GOA runs its own paired
  forward passes (:class:`PairedStreams`: the calibration hidden states through
  the dense layers and through the pruned ones, in lockstep, one layer call
  per layer and stream). It is computed as
  ``W̄2 = W2 Tᵀ + ((G'_KK + λ)⁻¹ E_K W2ᵀ)ᵀ`` with ``T`` the interpolation
  coefficients of :func:`statlab.fast.id.interpolation_coefficients` on the
  propagated Gram ``G'`` and ``E = Z'ᵀ (Z − Z')`` the error arriving from below.
  The paper's order is "reconstruct, then score, then cut" (pre-pruning
  recovery, §3.3: the scores should be "up to date"): the scores use the
  full-width re-fit ``W̄2``; since the cut itself would otherwise go
  uncorrected inside the module, the least-squares step is then applied to the
  kept channels (the same Alg. 2 step with the pruned module's input). The
  driver keeps ``W2``'s bias; Alg. 2 fits weights only, so nothing is lost there.
- **One-pass variant** (``propagate=False``): the driver hands GOA the dense
  pass's statistics (``ModuleStats.propagated`` is False) and the recovery
  reduces to the least-squares interpolation on the dense Gram (``E = 0``).
- **Post-LN encoders** (BERT, DistilBERT): the depth-2 module ends at the
  output map, before the residual sum and the LayerNorm, as in the pre-LN
  decoders the paper prunes; scores and re-fit target that map's output
  (``Y2``), so post-LN needs no change. The LayerNorm after it is not re-fitted.
- **Sizes**: the paper's main results use the same ratio in every module
  (FLAP's "UL-UM" setting, seed 003 Table 3; its "ML-MM" setting is not
  described), so the sizes are uniform (:func:`~statlab.reference.budget.uniform_sizes`).
- ``recovery=False`` gives the paper's "w/o remedy" rows (scores on the
  propagated statistics, no re-fit).
- **Backends**: GOA has no NumPy formulas of its own. Under
  ``backend="reference"`` it reads the torch fp64 Gram ``Zᵀ Z`` of the
  reference's captured matrices (:meth:`~statlab.backends.Backend.gram`) and
  computes in torch on the CPU; its own paired passes are torch under either
  backend. Only the capture differs, so both backends keep the same units.
"""

from __future__ import annotations

import contextlib
import copy
import warnings

import numpy as np
import torch

from statlab.fast.id import interpolation_coefficients, solve_psd
from statlab.inputs import model_inputs

from .base import ModuleStats, PruningMethod, Selection, unit_columns

ACTIVATION_FACTOR = 0.5  # seed 003 §3.2.3: ½ for ReLU; GELU and SiLU are treated as ReLU


# --------------------------------------------------------------------------- formulas


def second_moment_rows(A: torch.Tensor, S: torch.Tensor, rows: int, *, bias=None, mean=None) -> torch.Tensor:
    """``E[(A_i x + b_i)²]`` for every row ``A_i`` from the input Gram ``S = Σ x xᵀ`` over ``rows`` tokens.

    ``A_iᵀ (S / N) A_i + 2 b_i A_i·μ + b_i²`` (seed 003 Eq. 2 with the bias folded
    into the input); ``mean`` (``μ``) is only needed with a bias. Shape (n,).
    """
    A = A.to(torch.float64)
    N = max(int(rows), 1)
    out = ((A @ S.to(A)) * A).sum(dim=1) / N
    if bias is not None:
        b = bias.to(A)
        out = out + 2 * b * (A @ torch.as_tensor(mean).to(A)) + b * b
    return out


def mlp_importance(W_out: torch.Tensor, W_in: tuple, S: torch.Tensor, rows: int, *, biases=(None, None),
                   mean=None) -> torch.Tensor:
    """GOA's second-moment score of every MLP neuron (seed 003 Eq. 3; App. B §7.2 for gated MLPs).

    One input map (``W1``): ``½ ‖W2[:, i]‖² E[(W1_i x + b1_i)²]``. Two
    (``gate, up``, the Llama adapter's order): the product of the metrics of
    ``W_D W_U x`` (linear, factor 1) and ``W_D σ(W_G x)`` (factor ½).
    """
    B2 = W_out.to(torch.float64).square().sum(dim=0)  # ‖B_i‖², (n,)
    if len(W_in) == 1:
        return ACTIVATION_FACTOR * B2 * second_moment_rows(W_in[0], S, rows, bias=biases[0], mean=mean)
    gate, up = W_in
    m_gate = ACTIVATION_FACTOR * B2 * second_moment_rows(gate, S, rows, bias=biases[0], mean=mean)
    m_up = B2 * second_moment_rows(up, S, rows, bias=biases[1], mean=mean)
    return m_gate * m_up


def attention_importance(W_out: torch.Tensor, G: torch.Tensor, rows: int, unit_size: int) -> torch.Tensor:
    """GOA's score of every attention unit (seed 003 Eq. 3 with App. B §7.1).

    Channel ``c`` of the context is ``A_c x̂`` (``x̂`` the attention-mixed input),
    so ``A_cᵀ Σ_X̂ A_c = E[ctx_c²] = G[c, c] / N``; a unit sums
    ``‖W_O[:, c]‖² E[ctx_c²]`` over its ``unit_size`` channels. Shape (units,).
    """
    per_channel = W_out.to(torch.float64).square().sum(dim=0) * G.diagonal().to(torch.float64) / max(int(rows), 1)
    return per_channel.reshape(-1, unit_size).sum(dim=1)


def js_distance(P: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """Jensen–Shannon distance ``sqrt(½ KL(P‖M) + ½ KL(Q‖M))``, ``M = (P + Q) / 2``, natural log, over the last axis."""
    P, Q = P.to(torch.float64), Q.to(torch.float64)
    M = 0.5 * (P + Q)
    kl_p = torch.special.xlogy(P, P) - torch.special.xlogy(P, M)
    kl_q = torch.special.xlogy(Q, Q) - torch.special.xlogy(Q, M)
    return (0.5 * (kl_p + kl_q).sum(dim=-1)).clamp_min(0).sqrt()


def redundant_candidates(D, tau: float) -> list:
    """seed 003 Alg. 1: heads to prune first, from the pairwise divergence matrix ``D (h, h)``.

    Pairs are scanned row by row; a pair ``(i, j)`` closer than ``τ`` that was not
    seen before (in either order) adds ``i`` to the candidates, unless ``i`` or
    ``j`` already is one.
    """
    D = np.asarray(D, dtype=np.float64)
    h = D.shape[0]
    candidates, edges = [], set()
    for i in range(h):
        for j in range(h):
            if i != j and D[i, j] < tau and (i, j) not in edges and (j, i) not in edges:
                edges.add((i, j))
                if i not in candidates and j not in candidates:
                    candidates.append(i)
    return candidates


def removal_order(scores, candidates=()) -> list:
    """All units, first to remove first: the candidates (least important first), then the rest likewise."""
    scores = np.asarray(scores, dtype=np.float64)
    first = sorted(candidates, key=lambda u: (scores[u], u))
    rest = sorted((u for u in range(len(scores)) if u not in set(candidates)), key=lambda u: (scores[u], u))
    return first + rest


def refit_output_map(W: torch.Tensor, G: torch.Tensor, cols: torch.Tensor, error=None, *, ridge=0.0) -> torch.Tensor:
    """Least-squares output map on the columns ``cols`` (seed 003 Alg. 2, level 2).

    Minimises ``‖Z'_K W'ᵀ − Z Wᵀ‖_F`` with ``G = Z'ᵀZ'`` and ``error = Z'ᵀ(Z − Z')``
    (None: ``Z = Z'``): ``W' = W Tᵀ + ((G_KK + λ)⁻¹ E_K Wᵀ)ᵀ``, ``T`` from
    :func:`~statlab.fast.id.interpolation_coefficients` (same ridge ``λ``).
    Returns (out, len(cols)) in fp64.
    """
    G = G.to(torch.float64)
    W = W.to(device=G.device, dtype=torch.float64)
    cols = cols.to(G.device)
    k = cols.numel()
    if k == 0:
        return W[:, cols]
    out = W @ interpolation_coefficients(G, cols, ridge=ridge).T
    if error is not None:
        G_KK = G[cols][:, cols]
        scale = G_KK.diagonal().sum() / k
        if scale > 0:
            lam = (ridge + 10 * torch.finfo(torch.float64).eps) * scale
            rhs = error.to(G)[cols] @ W.T  # (k, out)
            out = out + solve_psd(G_KK + lam * torch.eye(k, dtype=G.dtype, device=G.device), rhs).T
    return out


# --------------------------------------------------------------------------- model passes


class _Stop(Exception):
    """Raised in a hook once a layer call has produced what was wanted."""


def token_mask(inputs: dict):
    """Bool mask of real (non-padding) tokens, or None."""
    mask = inputs.get("attention_mask")
    return None if mask is None else mask.bool()


def _masked(x: torch.Tensor, mask) -> torch.Tensor:
    x = x.reshape(-1, x.shape[-1])
    return x if mask is None else x[mask.reshape(-1).to(x.device)]


def _hidden(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _relative(path: str, layers_path: str, index: int) -> str:
    prefix = f"{layers_path}.{index}."
    if not path.startswith(prefix):
        raise ValueError(f"{path!r} is not inside layer {index} ({layers_path})")
    return path[len(prefix):]


class PairedStreams:
    """The calibration hidden states through the dense layers and through the pruned ones, in lockstep.

    GOA's recovery needs, for every module, the cross moment of the activation
    the pruned model feeds the output map (``Z'``) with the one the dense model
    feeds it (``Z``) on the same tokens. The inputs of layer 0 (and the extra
    arguments every layer receives: masks, rotary embeddings) are caught once;
    then both streams advance one layer call at a time: the dense stream
    through a copy of each layer taken while it was still dense, the pruned
    stream through the model's (already pruned) layer. Modules must be asked
    for bottom-up, as the driver does.
    """

    def __init__(self, model, adapter, blocks, calibration):
        self.model = model
        self.blocks = blocks
        self.layers_path = adapter.layers_path(model)
        self.layers = model.get_submodule(self.layers_path)
        self.extra, self.masks, self.dense = [], [], []
        first = self.layers[0]

        def catch(module, args, kwargs):
            raise _Caught(args, kwargs)

        handle = first.register_forward_pre_hook(catch, with_kwargs=True)
        try:
            with torch.no_grad():
                for batch in calibration:
                    inputs = model_inputs(model, batch)
                    try:
                        model(**inputs)
                    except _Caught as caught:
                        args, kwargs = caught.call
                        kwargs = dict(kwargs)
                        h = args[0] if args else kwargs.pop("hidden_states")
                        self.extra.append((tuple(args[1:]), kwargs))
                        self.dense.append(h)
                        self.masks.append(token_mask(inputs))
                    else:
                        raise RuntimeError("layer 0 was never called")
        finally:
            handle.remove()
        self.pruned = list(self.dense)
        self.at = 0  # both streams hold the inputs of layer `at`
        self.dense_layer = copy.deepcopy(self.layers[0])  # layer `at` as it was before pruning

    def _call(self, layer, h, b, record=(), stop=None):
        """Run ``layer`` on hidden states ``h`` (batch ``b``); record the inputs of submodules ``record``."""
        got, handles = {}, []
        for path in record:
            def hook(module, args, path=path):
                got[path] = args[0]
                if path == stop:
                    raise _Stop
            handles.append(layer.get_submodule(path).register_forward_pre_hook(hook))
        args, kwargs = self.extra[b]
        try:
            out = layer(h, *args, **kwargs)
        except _Stop:
            out = None
        finally:
            for hd in handles:
                hd.remove()
        return out, got

    def advance(self, index: int, *, pruned: bool = True) -> None:
        """Bring both streams to the inputs of layer ``index`` (layers below already pruned)."""
        if index < self.at:
            raise RuntimeError(f"modules must be visited bottom-up: layer {index} after layer {self.at}")
        with torch.no_grad():
            while self.at < index:
                for b in range(len(self.dense)):
                    self.dense[b] = _hidden(self._call(self.dense_layer, self.dense[b], b)[0])
                    if pruned:
                        self.pruned[b] = _hidden(self._call(self.layers[self.at], self.pruned[b], b)[0])
                self.at += 1
                self.dense_layer = copy.deepcopy(self.layers[self.at])

    def moments(self, index: int, part: str, *, propagated: bool, refit: bool = False, weights=None):
        """Statistics of module ``(index, part)`` from the paired streams.

        ``propagated``: ``error = Z'ᵀ (Z − Z')`` (n, n) for the recovery, and
        with ``refit`` (the level-1 re-fit) also the pruned module's
        ``gram = Z'ᵀZ'``, its input's ``inputs = x'ᵀx'`` (d, d) and
        ``input_error = x'ᵀ (x − x')`` (d, d).
        ``weights`` (``{path: W}``, the module's input maps) replace those
        maps' weights in the pruned layer for this pass only. Otherwise the
        dense module's statistics for the one-pass variant: ``gram = ZᵀZ``,
        ``inputs = xᵀx`` (module input), ``inputs_mean``, ``rows``.
        All fp64 on the model's device.
        """
        block = self.blocks[index]
        out_path = _relative(block.attn_out if part == "attention" else block.mlp_out, self.layers_path, index)
        in_path = _relative(block.attn_in[0] if part == "attention" else block.mlp_in[0], self.layers_path, index)
        self.advance(index, pruned=propagated)
        f64 = torch.float64
        acc = {"rows": 0}
        with torch.no_grad():
            for b in range(len(self.dense)):
                mask = self.masks[b]
                _, dense = self._call(self.dense_layer, self.dense[b], b, record=(in_path, out_path), stop=out_path)
                Z = _masked(dense[out_path], mask).to(f64)
                if propagated:
                    with _weights_swapped(self.model, weights or {}):
                        _, pruned = self._call(self.layers[index], self.pruned[b], b, record=(in_path, out_path),
                                               stop=out_path)
                    Zp = _masked(pruned[out_path], mask).to(f64)
                    _add(acc, "error", Zp.T @ (Z - Zp))
                    if refit:
                        x, xp = _masked(dense[in_path], mask).to(f64), _masked(pruned[in_path], mask).to(f64)
                        _add(acc, "gram", Zp.T @ Zp)
                        _add(acc, "inputs", xp.T @ xp)
                        _add(acc, "input_error", xp.T @ (x - xp))
                else:
                    x = _masked(dense[in_path], mask).to(f64)
                    _add(acc, "gram", Z.T @ Z)
                    _add(acc, "inputs", x.T @ x)
                    _add(acc, "mean", Z.sum(dim=0))
                    _add(acc, "inputs_mean", x.sum(dim=0))
                acc["rows"] += Z.shape[0]
        for key in ("mean", "inputs_mean"):
            if key in acc:
                acc[key] = acc[key] / max(acc["rows"], 1)
        return acc


@contextlib.contextmanager
def _weights_swapped(model, weights: dict):
    """The linear maps at the paths of ``weights`` compute with those weights (same shapes) inside the block."""
    saved = {}
    try:
        for path, W in weights.items():
            linear = model.get_submodule(path)
            saved[path] = linear.weight.data
            linear.weight.data = W.to(saved[path])
        yield
    finally:
        for path, data in saved.items():
            model.get_submodule(path).weight.data = data


class _Caught(Exception):
    def __init__(self, args, kwargs):
        super().__init__()
        self.call = (args, kwargs)


def _add(acc: dict, key: str, value: torch.Tensor) -> None:
    acc[key] = value if key not in acc else acc[key] + value


def attention_divergence(model, adapter, blocks, calibration) -> list:
    """Per layer, the mean JS distance between the attention maps of every two units (seed 003 Eq. 1).

    One pass over the dense model with eager attention (whose attention modules
    return their probabilities); for each layer and every pair of query heads,
    ``sqrt(JS)`` of their attention rows is averaged over all non-padded query
    positions of all batches. GQA units average the distances of all pairs of
    their query heads. Returns a list of (units, units) arrays, or None where
    the model returned no attention probabilities.
    """
    sums = [None] * len(blocks)
    counts = [0] * len(blocks)
    state = {"mask": None}
    handles = []
    for i, block in enumerate(blocks):
        def hook(module, args, output, i=i):
            probs = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
            if probs is None:
                return
            probs = probs.detach()
            h = probs.shape[1]
            rows = probs.permute(0, 2, 1, 3)  # (batch, query, head, key)
            mask = state["mask"]
            rows = rows.reshape(-1, h, rows.shape[-1]) if mask is None else rows[mask.to(rows.device)]
            D = torch.zeros(h, h, dtype=torch.float64)
            for a in range(h):
                for c in range(a + 1, h):
                    D[a, c] = D[c, a] = js_distance(rows[:, a], rows[:, c]).sum().cpu()
            sums[i] = D if sums[i] is None else sums[i] + D
            counts[i] += rows.shape[0]
        handles.append(model.get_submodule(block.attention).register_forward_hook(hook))
    try:
        with adapter.attention_maps(model), torch.no_grad():
            for batch in calibration:
                inputs = model_inputs(model, batch)
                state["mask"] = token_mask(inputs)
                model(**inputs)
    finally:
        for hd in handles:
            hd.remove()
    out = []
    for block, total, count in zip(blocks, sums, counts):
        if total is None:
            out.append(None)
            continue
        D = (total / max(count, 1)).numpy()
        r = block.heads_per_unit
        out.append(D.reshape(block.units, r, block.units, r).mean(axis=(1, 3)))
    return out


# --------------------------------------------------------------------------- the method


def _as_tensor(x, device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(device=device,
                                                                                       dtype=torch.float64)


def _detached(x, device):
    return None if x is None else x.detach().to(device=device, dtype=torch.float64)


class Goa(PruningMethod):
    """GOA (seed 003): second-moment scores, JS head grouping (Alg. 1), least-squares recovery (Alg. 2–4).

    Parameters
    ----------
    tau : float or None
        Divergence threshold of Alg. 1 (None: no head grouping).
    recovery : bool
        Least-squares re-fit of the output map against the dense outputs (the
        paper's "remedy"); False keeps the kept columns as they are.
    refit_inputs : bool
        Also re-fit level 1 (``W_Q, W_K, W_V`` / ``W1`` or ``gate, up``) against
        the dense module's level-1 outputs before level 2 (Alg. 2–4 in full;
        needs ``recovery`` and propagation). Off by default: it costs a second
        paired pass per module.
    """

    name = "goa"
    needs = frozenset({"activations", "inputs"})  # uniform sizes: no dense pass when it propagates
    propagates = True  # Alg. 2: modules pruned in sequence, each on the outputs of the pruned ones

    def __init__(self, *, seed: int = 0, ridge: float = 0.0, tau: float | None = 0.2, recovery: bool = True,
                 refit_inputs: bool = False):
        super().__init__(seed=seed, ridge=ridge)
        if refit_inputs and not recovery:
            raise ValueError("refit_inputs=True re-fits level 1 as part of the recovery: it needs recovery=True")
        self.tau = tau
        self.recovery, self.refit_inputs = bool(recovery), bool(refit_inputs)
        self.candidates = {}
        if self.refit_inputs:
            self.label = "goa (level-1 re-fit)"

    def prepare(self, model, adapter, blocks, calibration):
        self.model, self.blocks = model, blocks
        self.candidates = {}
        if self.tau is not None:
            for block, D in zip(blocks, attention_divergence(model, adapter, blocks, calibration)):
                if D is None:
                    warnings.warn(f"layer {block.index}: the model returned no attention probabilities; "
                                  "GOA's head grouping (Alg. 1) is skipped there", stacklevel=2)
                    continue
                self.candidates[block.index] = redundant_candidates(D, self.tau)
        self._run = (model, adapter, blocks, calibration)
        self._streams = None

    @property
    def streams(self) -> PairedStreams:
        """The paired dense/pruned passes, started on first use (they catch layer 0's inputs then)."""
        if self._streams is None:
            self._streams = PairedStreams(*self._run)
        return self._streams

    def sizes(self, modules, costs, fraction, adapter):
        choice = super().sizes(modules, costs, fraction, adapter)
        choice.info["goa_redundant_units"] = {str(k): [int(u) for u in v] for k, v in self.candidates.items()}
        choice.info["goa_tau"] = self.tau
        return choice

    def _statistics(self, module: ModuleStats):
        """``(G, S, inputs_mean, rows, error)`` in fp64: the driver's propagated stats, or GOA's own dense ones."""
        G = module.gram()  # a torch Gram under either backend (the reference's: Z^T Z on the CPU)
        device = G.device
        S = module.backend.gram(module.inputs, device) if module.inputs is not None else None
        mean = None if module.inputs_mean is None else _as_tensor(module.inputs_mean, device)
        error = None
        if self.recovery and module.propagated:  # the one-pass variant: dense statistics, E = 0
            error = self.streams.moments(module.layer, module.kind, propagated=True)["error"].to(device)
        return G, S, mean, module.rows, error

    def _refit_level_one(self, module: ModuleStats, device):
        """Alg. 2–4, level 1: ``(W̄_in, G'', E'')`` — the input maps re-fitted on the pruned module's input.

        ``W̄_j = argmin ‖x' W̄_jᵀ − x W_jᵀ‖`` for every input map (the same ``x'``
        for all: Alg. 3 forms ``xtx`` once), i.e.
        ``W̄_j = W_j + ((x'ᵀx' + λ)⁻¹ x'ᵀ(x − x') W_jᵀ)ᵀ`` with ``x`` the dense
        module's input on the same tokens (:func:`refit_output_map` on all
        ``d`` columns); the biases stay, so they cancel. Then the pruned stream
        runs again with ``W̄`` in place: ``G'' = Z''ᵀZ''`` and
        ``E'' = Z''ᵀ(Z − Z'')`` of the output map's new input ``Z''`` feed the
        level-2 re-fit and the scores (Alg. 2's ``X̂2 ← post-process(Ŷ1)``).
        """
        block = self.blocks[module.layer]
        paths = block.attn_in if module.kind == "attention" else block.mlp_in
        first = self.streams.moments(module.layer, module.kind, propagated=True, refit=True)
        S, E = first["inputs"].to(device), first["input_error"].to(device)
        every = torch.arange(S.shape[0], device=device)
        W_bar = tuple(refit_output_map(w.detach(), S, every, E, ridge=module.ridge) for w in module.W_in)
        again = self.streams.moments(module.layer, module.kind, propagated=True, refit=True,
                                     weights=dict(zip(paths, W_bar)))
        return W_bar, again["gram"].to(device), again["error"].to(device)

    def select(self, module, k):
        G, S, x_mean, rows, error = self._statistics(module)
        device = G.device
        W_in = tuple(w.detach().to(device) for w in module.W_in)
        if self.refit_inputs and error is not None:  # the one-pass variant has x' = x: nothing to re-fit
            W_in, G, error = self._refit_level_one(module, device)
        W = module.W_out.detach().to(device=device, dtype=torch.float64)
        u, n = module.unit_size, module.units
        all_cols = unit_columns(range(n), u).to(device)
        # pre-pruning recovery (§3.3): score with the output map re-fitted on the full module
        W_bar = refit_output_map(W, G, all_cols, error, ridge=module.ridge) if error is not None else W
        if module.kind == "attention":
            scores = attention_importance(W_bar, G, rows, u)
            candidates = self.candidates.get(module.layer, [])
        else:
            block = self.blocks[module.layer]
            biases = tuple(_detached(self.model.get_submodule(p).bias, device) for p in block.mlp_in)
            scores = mlp_importance(W_bar, W_in, S, rows, biases=biases, mean=x_mean)
            candidates = []
        order = removal_order(scores.cpu().numpy(), candidates)
        kept = sorted(order[n - k:])
        cols = unit_columns(kept, u).to(device)
        if not self.recovery:
            return Selection(kept, W[:, cols])
        w_out = refit_output_map(W, G, cols, error, ridge=module.ridge)
        if not (self.refit_inputs and error is not None):
            return Selection(kept, w_out)
        rows_of = [unit_columns(kept, w.shape[0] // n).to(device) for w in W_in]
        return Selection(kept, w_out, w_in_rows=tuple(w[r] for w, r in zip(W_in, rows_of)))
