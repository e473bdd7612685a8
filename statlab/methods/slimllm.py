"""SlimLLM (Guo, Chen, Tang, Wang, ICML 2025; seed 004, arXiv 2505.22689).

SlimLLM prunes heads and MLP channels layer by layer, each layer on the
outputs of the already pruned ones, and

1. scores an attention head by the **Pearson similarity** between the
   attention output and the output without that head (seed 004 Eq. 4), then
   improves the kept set by a **greedy swap search** (seed 004 Alg. 1 / §4.1);
2. scores an MLP channel in the **feature space** of the MLP output: the
   down-projection column of the channel, expressed in the principal axes of
   the output (Eq. 5), weighted by the smoothed eigenvalues (Eq. 6–7), plus
   the input-weighted norms of its gate/up rows (Eq. 8, after LoRAP);
3. **recovers** the output by an independent linear regression
   ``y_j ≈ a_j x_j + b_j`` of every output dimension of the dense module on the
   pruned one (Eq. 9), folded into the output map as
   ``W' = diag(a) W_K`` with bias ``b`` (Eq. 10);
4. sets **per-layer ratios** from the cosine similarity of each layer's input
   and output hidden states (Eq. 11, after ShortGPT): layers that change the
   hidden state less are pruned more.

The seed's text lost its formulas in conversion; the formulas below follow the
paper's prose and the authors' released code (github.com/guojialong1/Slimllm,
read for the formulas only): where they add detail it is marked "(code)".

Choices, and deviations forced by the protocol:

- **Head score** (Eq. 4): with ``Y = Σ_h Y_h`` the output of ``W_O`` (bias
  excluded; Pearson ignores it anyway) and ``Y_h = C_h W_O,hᵀ``,
  ``S_h = Σ_j |ρ(Y_:j − Y_h,:j, Y_:j)|`` — Pearson over tokens, per output
  dimension ``j``, absolute values summed over ``j`` (code). Heads of largest
  ``S_h`` (least missed) are removed. Everything is computed from the
  centred context covariance ``C = G/N − μμᵀ`` (Gram and mean from the
  capture), so no per-head outputs are materialised: per output dimension the
  (units × units) covariances of the heads' outputs give every similarity.
- **Greedy search** (Alg. 1, code): for each removed head in turn, try it in
  place of each kept head; keep the swap that raises the similarity of the
  kept heads' summed output with ``Y`` the most (if any).
- **GQA**: a unit is a KV group (its query heads and K/V head); the head score
  and the search run on units, ``Y_u`` being the group's summed output.
- **Channel score** (Eq. 5–8, code): PCA of the centred MLP output
  covariance ``Cov(Y) = W_D C_Z W_Dᵀ`` (eigenvalues ``λ``, eigenvectors ``V``);
  eigen-direction weights ``s = sigmoid(λ / mean λ)`` (Eq. 6: the smoothing
  "function" is a sigmoid in the code); ``I_D,i = ‖z_i‖ · ‖ |W_D[:, i]ᵀ V| ∘ s ‖``
  (Eq. 7); ``I_i = Σ_{W ∈ {gate, up}} ‖W_i ∘ ‖x‖‖ + I_D,i`` (Eq. 8), ``‖x‖`` the
  column norms of the MLP input and ``‖z_i‖`` of channel ``i``'s activation
  (both over all calibration tokens, as in the code). BERT/DistilBERT have one
  input map ``W1``, so the sum has one term; ``b1`` is not scored (the code has
  no biases).
- **Piecewise score** (§4.3 "piecewise importance score", code): the
  ``protect`` (1%) lowest-scoring channels are kept, and the next lowest are
  removed. Set ``protect=0`` for plain lowest-score removal.
- **Recovery** (Eq. 9–10): per output dimension ``j`` a least-squares fit
  ``y_j ≈ a_j x_j + b_j`` over the calibration tokens, ``x = Z_K W_Kᵀ`` the
  pruned output and ``y = Z Wᵀ`` the unpruned output *on the same (propagated)
  input* (code), both without the existing bias ``b_O``:
  ``a_j = cov(x_j, y_j) / var(x_j)``, ``b_j = ȳ_j − a_j x̄_j``. The new output
  map is ``diag(a) W_K`` and its bias ``b_O + b`` (:class:`~statlab.methods.Selection`'s
  ``b_out``; a map without bias, e.g. Llama's ``o_proj`` / ``down_proj``, gets
  ``b`` as its new bias, and the plan stores it). This is the default
  (``intercept=True``, the paper's Eq. 9). ``intercept=False`` fits
  ``y_j ≈ a_j x_j`` (``a_j = E[x_j y_j] / E[x_j²]``) and keeps the bias as it
  is: the behaviour before the driver could apply a bias, kept for comparison.
  The paper reports ``a ≈ 1`` and ``b ≈ 0`` on LLaMA (§4.3, Fig. 2), where the
  two fits nearly agree.
- **Layer ratios** (Eq. 11, code): ``s_l`` = mean over non-padded tokens of
  ``cos(h_l, h_{l+1})`` on the dense model; the ``skip`` layers of lowest
  ``s_l`` are not pruned; the others get ratio ``r_l ∝ P · softmax(α s)_l``
  (``P`` pruned layers), the same for the layer's heads and channels. The paper
  scales these to a parameter ratio; here one scale factor is bisected so that
  the sizes (rounded to the nearest unit) meet the driver's budget (MACs or
  parameters, ``≤ fraction · dense``), and the budget the rounding leaves is
  handed out one unit at a time by the largest rounded-off remainders.
  ``α``: 10 at 20% and 7 at 50% pruning in the paper (§5.1); by default
  ``α = 12 − 10 ρ`` for a pruning fraction ``ρ = 1 − fraction`` (the line
  through those two settings, at least 1).
  ``skip``: the paper skips 2 of LLaMA-7B's 32 layers ("first and last", in
  practice the two of lowest similarity); by default ``round(L / 16)`` layers
  (2 of 30–32, 1 of 12, none of 6). If the budget cannot be met without
  pruning the skipped layers, none is skipped.
- **Post-LN encoders** (BERT, DistilBERT): the layer similarity compares the
  layer's input and output hidden states as they are (both after a
  LayerNorm); head scores and the regression act on the output map's output,
  before the residual sum and the LayerNorm, as in the decoder case.
- **Sequential**: the code prunes layer by layer on the outputs of the pruned
  layers, so ``propagates = True`` (``propagate=False`` uses the dense pass).
- **Backends**: SlimLLM has no NumPy formulas of its own. Under
  ``backend="reference"`` it reads the torch fp64 Gram ``Zᵀ Z`` of the
  reference's captured matrices (:meth:`~statlab.backends.Backend.gram`) and
  computes in torch on the CPU; only the capture differs.
"""

from __future__ import annotations

import numpy as np
import torch

from statlab.capture import capture
from statlab.reference import budget as budget_lib

from .base import PruningMethod, Selection, SizeChoice, unit_columns

# --------------------------------------------------------------------------- attention: Pearson similarity


def centred_covariance(G: torch.Tensor, mean, rows: int) -> torch.Tensor:
    """``G / N − μ μᵀ``: the covariance of the captured activations (population, fp64)."""
    G = G.to(torch.float64)
    mu = torch.as_tensor(np.asarray(mean) if not isinstance(mean, torch.Tensor) else mean).to(G)
    return G / max(int(rows), 1) - torch.outer(mu, mu)


def unit_output_covariances(W: torch.Tensor, C: torch.Tensor, unit_size: int) -> torch.Tensor:
    """``Q[j, u, v] = cov(Y_u[:, j], Y_v[:, j])``, ``Y_u = C_u W_uᵀ`` the output of unit ``u``: (out, units, units)."""
    W = W.to(C)
    out, n = W.shape
    units = n // unit_size
    Wr = W.reshape(out, units, unit_size)
    Q = torch.empty(out, units, units, dtype=C.dtype, device=C.device)
    for u in range(units):
        T = Wr[:, u, :] @ C[u * unit_size:(u + 1) * unit_size, :]  # (out, n)
        Q[:, u, :] = (T.reshape(out, units, unit_size) * Wr).sum(dim=-1)
    return Q


def pearson_similarity(Q: torch.Tensor, kept) -> float:
    """``Σ_j |ρ(Σ_{u ∈ kept} Y_u[:, j], Y[:, j])|`` from the unit covariances ``Q`` (seed 004 Eq. 4).

    Output dimensions where either side has zero variance add nothing.
    """
    m = torch.zeros(Q.shape[1], dtype=Q.dtype, device=Q.device)
    m[torch.as_tensor(list(kept), dtype=torch.int64, device=Q.device)] = 1.0
    cov = Q.sum(dim=2) @ m  # (out,)
    var = torch.einsum("juv,u,v->j", Q, m, m)
    var_y = Q.sum(dim=(1, 2))
    denom = (var.clamp_min(0) * var_y.clamp_min(0)).sqrt()
    ok = denom > 1e-300
    return float((cov[ok].abs() / denom[ok]).sum())


def head_scores(Q: torch.Tensor) -> np.ndarray:
    """``S_u``: similarity of the output without unit ``u`` to the full output (high: least missed)."""
    units = Q.shape[1]
    return np.array([pearson_similarity(Q, [v for v in range(units) if v != u]) for u in range(units)])


def greedy_heads(Q: torch.Tensor, k: int, *, greedy: bool = True) -> list:
    """Kept units: the ``k`` of smallest ``S_u``, then the swap search of seed 004 Alg. 1 (code).

    For each removed unit in turn (most similar-when-removed first), try it in
    place of every kept unit; adopt the best swap if it raises the similarity.
    """
    units = Q.shape[1]
    order = np.argsort(-head_scores(Q), kind="stable")  # first to remove first
    removed, kept = [int(u) for u in order[:units - k]], [int(u) for u in order[units - k:]]
    if not greedy or k == 0 or k == units:
        return sorted(kept)
    best = pearson_similarity(Q, kept)
    for candidate in removed:
        base, chosen = list(kept), None
        for j in range(len(base)):
            trial = list(base)
            trial[j] = candidate
            value = pearson_similarity(Q, trial)
            if value > best:
                best, chosen = value, trial
        if chosen is not None:
            kept = chosen
    return sorted(kept)


# --------------------------------------------------------------------------- MLP: feature-space importance


def channel_scores(W_out: torch.Tensor, W_in: tuple, C: torch.Tensor, G: torch.Tensor,
                   S_in: torch.Tensor) -> torch.Tensor:
    """SlimLLM's channel importance (seed 004 Eq. 5–8, code). Shape (n,).

    Parameters
    ----------
    W_out : (out, n) down projection / ``W2``
    W_in : tuple of (n, d) — ``gate, up`` or ``W1``
    C : (n, n) centred covariance of the channel activations ``Z``
    G : (n, n) Gram ``ZᵀZ`` (its diagonal gives ``‖z_i‖²``)
    S_in : (d, d) Gram of the MLP input (its diagonal gives ``‖x‖²``)
    """
    W = W_out.to(C)
    cov_y = W @ C @ W.T  # (out, out): PCA of the output (Eq. 1-2)
    lam, V = torch.linalg.eigh(0.5 * (cov_y + cov_y.T))
    lam = lam.abs()
    s = torch.sigmoid(lam / lam.mean()) if lam.mean() > 0 else torch.full_like(lam, 0.5)  # Eq. 6
    feature = (W.T @ V).abs() * s  # (n, out): Eq. 5 weighted per direction
    z_norm = G.diagonal().to(C).clamp_min(0).sqrt()
    score = z_norm * feature.norm(dim=1)  # Eq. 7
    x_norm = S_in.diagonal().to(C).clamp_min(0).sqrt()
    for A in W_in:  # Eq. 8
        score = score + (A.to(C) * x_norm).norm(dim=1)
    return score


def piecewise_keep(scores, k: int, protect: float = 0.01) -> list:
    """Kept channels: all but the ``n − k`` lowest scores after the ``round(protect · n)`` lowest (code)."""
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.size
    order = np.argsort(scores, kind="stable")
    m = min(int(round(protect * n)), k)
    removed = set(order[m:m + n - k].tolist())
    return [i for i in range(n) if i not in removed]


# --------------------------------------------------------------------------- recovery


def output_regression(W: torch.Tensor, G: torch.Tensor, mean, rows: int, cols, *, intercept: bool = True,
                      ridge: float = 0.0):
    """Per output dimension, ``y_j ≈ a_j x_j + b_j`` by least squares (seed 004 Eq. 9).

    ``y = Z Wᵀ`` (dense module), ``x = Z_K W_Kᵀ`` (kept columns ``cols``).
    ``intercept=False``: ``y_j ≈ a_j x_j``. A dimension whose ``x_j`` has no
    variance keeps ``a_j = 1``. ``ridge`` adds ``ridge · mean_j var(x_j)`` to the
    denominators. Returns ``(a, b)``, both (out,) fp64.
    """
    G = G.to(torch.float64)
    W = W.to(G)
    N = max(int(rows), 1)
    mu = torch.as_tensor(np.asarray(mean) if not isinstance(mean, torch.Tensor) else mean).to(G)
    cols = torch.as_tensor(cols, dtype=torch.int64, device=G.device)
    M = centred_covariance(G, mu, N) if intercept else G / N
    WK = W[:, cols]
    cross = ((WK @ M[cols, :]) * W).sum(dim=1)
    var = ((WK @ M[cols][:, cols]) * WK).sum(dim=1)
    tiny = 1e-12 * float(var.abs().max()) if var.numel() else 0.0
    denom = var + ridge * var.mean() if var.numel() else var
    ok = var > tiny
    a = torch.ones(W.shape[0], dtype=G.dtype, device=G.device)
    a[ok] = cross[ok] / denom[ok]
    b = (W @ mu - a * (WK @ mu[cols])) if intercept else torch.zeros_like(a)
    return a, b


# --------------------------------------------------------------------------- layer ratios


def layer_similarity(model, adapter, calibration) -> np.ndarray:
    """``s_l``: mean over non-padded tokens of ``cos(input, output)`` of every layer (dense model), shape (L,).

    What the driver's dense pass supplies as ``ModuleStats.layer_similarity``
    (``sizes_needs``), for a model outside a prune.
    """
    return capture(model, calibration, {}, similarity_of=adapter.layers_path(model))["layer similarity"]


def default_alpha(fraction: float) -> float:
    """``α = 12 − 10 ρ`` (ρ = 1 − fraction): 10 at 20% and 7 at 50% pruning, as in seed 004 §5.1; at least 1."""
    return max(1.0, 12.0 - 10.0 * (1.0 - fraction))


def layer_shares(similarity, alpha: float, skip: int) -> np.ndarray:
    """Relative pruning ratio of every layer (seed 004 Eq. 11, code): ``P · softmax(α s)`` over the pruned layers.

    The ``skip`` layers of lowest similarity get 0; the shares of the ``P``
    others average 1.
    """
    s = np.asarray(similarity, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    pruned = order[:len(s) - skip]
    shares = np.zeros(len(s))
    z = alpha * s[pruned]
    e = np.exp(z - z.max())
    shares[pruned] = len(pruned) * e / e.sum()
    return shares


def sizes_for_shares(module_shares, costs, fraction, *, iterations=100):
    """Sizes ``units · (1 − min(c · share, 1))``, rounded, with the smallest scale ``c`` meeting the budget.

    Then the unused budget goes, one unit at a time, to the modules with the
    largest rounded-off remainders whose unit still fits
    (:func:`statlab.reference.budget.spend_leftover`). Returns
    ``(sizes, c)``, or ``(None, None)`` when even ``c`` at which every module
    with a share is emptied does not meet the budget.
    """
    shares = np.asarray(module_shares, dtype=np.float64)
    units = np.array([c.units for c in costs])
    per = np.array([c.per_unit for c in costs], dtype=np.float64)
    target = fraction * float(units @ per)

    def at(c):
        exact = units * (1.0 - np.minimum(c * shares, 1.0))
        return exact, np.floor(exact + 0.5).astype(int)

    def cost(sizes):
        return float(sizes @ per)

    if cost(at(0.0)[1]) <= target + 1e-9:
        c = 0.0
    else:
        positive = shares[shares > 0]
        if positive.size == 0:
            return None, None
        hi = 1.0 / positive.min()
        if cost(at(hi)[1]) > target + 1e-9:
            return None, None
        lo = 0.0
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            if cost(at(mid)[1]) <= target + 1e-9:
                hi = mid
            else:
                lo = mid
        c = hi
    exact, sizes = at(c)
    return budget_lib.spend_leftover(sizes, exact, costs, target - cost(sizes)), float(c)


# --------------------------------------------------------------------------- the method


class SlimLLM(PruningMethod):
    """SlimLLM (seed 004): Pearson head search, PCA channel scores, per-dimension regression, cosine layer ratios.

    Parameters
    ----------
    alpha : float, optional
        Temperature of the layer ratios (Eq. 11); default :func:`default_alpha`.
    skip_layers : int, optional
        Layers of lowest input/output similarity left unpruned; default ``round(L / 16)``.
    protect : float
        Fraction of lowest-scoring MLP channels kept (the code's piecewise score).
    greedy : bool
        Run the head swap search (Alg. 1).
    intercept : bool
        Regression with intercept, added to the output map's bias (default:
        the paper's Eq. 9–10), or without (``y_j ≈ a_j x_j``, bias unchanged;
        the behaviour before plans could store a bias).
    """

    name = "slimllm"
    needs = frozenset({"activations", "inputs"})
    sizes_needs = frozenset({"layer_similarity"})  # Eq. 11's layer ratios, from the driver's dense pass
    propagates = True  # the code prunes each layer on the outputs of the pruned layers below

    def __init__(self, *, seed: int = 0, ridge: float = 0.0, alpha: float | None = None,
                 skip_layers: int | None = None, protect: float = 0.01, greedy: bool = True,
                 intercept: bool = True):
        super().__init__(seed=seed, ridge=ridge)
        self.alpha, self.skip_layers, self.protect = alpha, skip_layers, protect
        self.greedy, self.intercept = bool(greedy), bool(intercept)
        if not self.intercept:
            self.label = "slimllm (no intercept)"

    def sizes(self, modules, costs, fraction, adapter):
        keys = list(costs)
        L = len({k.layer for k in keys})
        by_layer = {k.layer: modules[k].layer_similarity for k in keys if modules.get(k) is not None}
        if len(by_layer) != L or None in by_layer.values():
            raise ValueError("SlimLLM's sizes (Eq. 11) need every layer's input/output similarity "
                             "(ModuleStats.layer_similarity), which the driver's dense pass supplies: "
                             "run SlimLLM through statlab.prune")
        sim = np.array([by_layer[layer] for layer in sorted(by_layer)])
        alpha = self.alpha if self.alpha is not None else default_alpha(fraction)
        skip = self.skip_layers if self.skip_layers is not None else int(round(L / 16))
        skip = min(max(skip, 0), L - 1)
        shares = layer_shares(sim, alpha, skip)
        cost_list = [costs[k] for k in keys]
        sizes, scale = sizes_for_shares(np.array([shares[k.layer] for k in keys]), cost_list, fraction)
        if sizes is None:  # the skipped layers alone exceed the budget: prune every layer
            skip = 0
            shares = layer_shares(sim, alpha, 0)
            sizes, scale = sizes_for_shares(np.array([shares[k.layer] for k in keys]), cost_list, fraction)
        info = {
            "slimllm_layer_similarity": [float(x) for x in sim],
            "slimllm_alpha": float(alpha),
            "slimllm_skipped_layers": sorted(int(i) for i in np.argsort(sim, kind="stable")[:skip]),
            "slimllm_layer_ratios": [float(min(scale * x, 1.0)) for x in shares],
        }
        return SizeChoice(dict(zip(keys, sizes)), None, info)

    def select(self, module, k):
        G = module.gram()  # a torch Gram under either backend (the reference's: Z^T Z on the CPU)
        device = G.device
        C = centred_covariance(G, module.mean, module.rows)
        W = module.W_out.detach().to(device=device, dtype=torch.float64)
        u = module.unit_size
        if module.kind == "attention":
            kept = greedy_heads(unit_output_covariances(W, C, u), k, greedy=self.greedy)
        else:
            S_in = module.backend.gram(module.inputs, device)
            W_in = tuple(w.detach() for w in module.W_in)
            kept = piecewise_keep(channel_scores(W, W_in, C, G, S_in).cpu().numpy(), k, self.protect)
        cols = unit_columns(kept, u).to(device)
        a, b = output_regression(W, G, module.mean, module.rows, cols, intercept=self.intercept,
                                 ridge=module.ridge)
        w_out = a[:, None] * W[:, cols]  # Eq. 10: diag(a) W_K
        if not self.intercept:
            return Selection(kept, w_out)
        old = torch.zeros_like(b) if module.b_out is None else module.b_out.detach().to(b)
        return Selection(kept, w_out, b_out=old + b)
