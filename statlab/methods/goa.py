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
  on the dense model by the driver's dense pass (``attention_probs`` in
  ``sizes_needs``; :meth:`Goa.summarise_attention` reduces each batch, and the
  adapter switches eager attention on for that pass only). For GQA units ``D`` between two units is the mean over all
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
  and dense module inputs (``ModuleStats.inputs_error``), then the driver
  measures the module again through the re-fitted maps
  (``ModuleStats.remeasure``) so that level 2 is fitted on its new input
  (:meth:`Goa._refit_level_one`); the
  re-fitted rows of the kept units go back as the Selection's ``w_in_rows``
  and the plan stores them. The biases of level 1 are kept (Alg. 2 fits
  weights only). The level-2 re-fit is done exactly:
  ``W̄2ᵀ = (Z'_Kᵀ Z'_K + λ)⁻¹ Z'_Kᵀ Z W2ᵀ`` with ``Z'`` the input of the output
  map computed through the already pruned modules (the driver's propagated
  statistics) and ``Z`` the same activation in the dense model, whose cross
  moment the driver supplies (``dense_outputs`` in ``needs``:
  ``ModuleStats.output_error``, from a dense copy of each block run beside the
  pruned one, :class:`statlab.capture.DenseStream`). It is computed as
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
  computes in torch on the CPU; the dense-output moments are torch under
  either backend. Only the capture differs, so both backends keep the same units.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from statlab.capture import capture

from .base import ModuleStats, PruningMethod, Selection, refit_output_map, unit_columns

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


# --------------------------------------------------------------------------- attention maps


def pairwise_js(probs: torch.Tensor, rows) -> torch.Tensor:
    """Sum over the real query positions of the JS distance between every two heads' attention rows: (h, h) fp64.

    ``probs`` (batch, heads, q, k), ``rows`` the bool mask of real query
    positions (batch, q) or None (:meth:`Goa.summarise_attention`).
    """
    h = probs.shape[1]
    per_row = probs.permute(0, 2, 1, 3)  # (batch, query, head, key)
    per_row = per_row.reshape(-1, h, per_row.shape[-1]) if rows is None else per_row[rows.to(per_row.device)]
    D = torch.zeros(h, h, dtype=torch.float64)
    for a in range(h):
        for c in range(a + 1, h):
            D[a, c] = D[c, a] = js_distance(per_row[:, a], per_row[:, c]).sum().cpu()
    return D


def unit_divergence(D, heads_per_unit: int) -> np.ndarray:
    """Mean head-pair distances ``D (h, h)`` between units of ``heads_per_unit`` query heads: (units, units)."""
    D = np.asarray(D, dtype=np.float64)
    units = D.shape[0] // heads_per_unit
    return D.reshape(units, heads_per_unit, units, heads_per_unit).mean(axis=(1, 3))


def attention_divergence(model, adapter, blocks, calibration) -> list:
    """Per layer, the mean JS distance between the attention maps of every two units (seed 003 Eq. 1).

    The driver's dense pass computes the same for :class:`Goa` (``attention_probs``
    in its ``sizes_needs``); this is that pass alone, for a model outside a prune:
    one pass with eager attention, ``sqrt(JS)`` of every two query heads'
    attention rows averaged over all non-padded query positions of all
    batches, GQA units averaging the distances of all pairs of their query
    heads. Returns a list of (units, units) arrays, or None where the model
    returned no attention probabilities.
    """
    labels = {f"layer {b.index}": b.attention for b in blocks}
    with adapter.attention_maps(model):
        got = capture(model, calibration, {}, attention_of=labels, summarise=pairwise_js,
                      desc="attention maps")["attention"]
    return [None if got[label] is None else unit_divergence(got[label].numpy(), b.heads_per_unit)
            for label, b in zip(labels, blocks)]


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
        capture per module.
    """

    name = "goa"
    needs = frozenset({"activations", "inputs", "dense_outputs"})  # uniform sizes: no Grams in the dense pass
    sizes_needs = frozenset({"attention_probs"})  # Alg. 1's head distances, from the dense model
    propagates = True  # Alg. 2: modules pruned in sequence, each on the outputs of the pruned ones

    def __init__(self, *, seed: int = 0, ridge: float = 0.0, tau: float | None = 0.2, recovery: bool = True,
                 refit_inputs: bool = False):
        super().__init__(seed=seed, ridge=ridge)
        if refit_inputs and not recovery:
            raise ValueError("refit_inputs=True re-fits level 1 as part of the recovery: it needs recovery=True")
        self.tau = tau
        self.recovery, self.refit_inputs = bool(recovery), bool(refit_inputs)
        self.needs = type(self).needs if self.recovery else type(self).needs - {"dense_outputs"}
        self.sizes_needs = type(self).sizes_needs if tau is not None else frozenset()
        self.candidates = {}
        if self.refit_inputs:
            self.label = "goa (level-1 re-fit)"

    def summarise_attention(self, probs, rows):
        return pairwise_js(probs, rows)

    def sizes(self, modules, costs, fraction, adapter):
        choice = super().sizes(modules, costs, fraction, adapter)
        self.candidates = {}
        if self.tau is not None:
            for key, module in modules.items():
                if key.kind != "attention":
                    continue
                if module.attention is None:
                    warnings.warn(f"layer {key.layer}: the model returned no attention probabilities; "
                                  "GOA's head grouping (Alg. 1) is skipped there", stacklevel=2)
                    continue
                D = unit_divergence(module.attention.numpy(), module.heads_per_unit)
                self.candidates[key.layer] = redundant_candidates(D, self.tau)
        choice.info["goa_redundant_units"] = {str(k): [int(u) for u in v] for k, v in self.candidates.items()}
        choice.info["goa_tau"] = self.tau
        return choice

    def _statistics(self, module: ModuleStats):
        """``(G, S, inputs_mean, rows, error)`` in fp64 from the driver's statistics of ``module``."""
        G = module.gram()  # a torch Gram under either backend (the reference's: Z^T Z on the CPU)
        device = G.device
        S = module.backend.gram(module.inputs, device) if module.inputs is not None else None
        mean = None if module.inputs_mean is None else _as_tensor(module.inputs_mean, device)
        error = None
        if self.recovery and module.propagated:  # the one-pass variant: dense statistics, E = 0
            if module.output_error is None:
                raise RuntimeError(f"layer {module.layer} {module.kind}: no dense-output moment; GOA's recovery "
                                   "runs through statlab.prune, which supplies it")
            error = module.output_error.to(device)
        return G, S, mean, module.rows, error

    def _refit_level_one(self, module: ModuleStats, device):
        """Alg. 2–4, level 1: ``(W̄_in, G'', E'')`` — the input maps re-fitted on the pruned module's input.

        ``W̄_j = argmin ‖x' W̄_jᵀ − x W_jᵀ‖`` for every input map (the same ``x'``
        for all: Alg. 3 forms ``xtx`` once), i.e.
        ``W̄_j = W_j + ((x'ᵀx' + λ)⁻¹ x'ᵀ(x − x') W_jᵀ)ᵀ`` with ``x`` the dense
        module's input on the same tokens (:func:`refit_output_map` on all
        ``d`` columns; ``x'ᵀx'`` and ``x'ᵀ(x − x')`` are the driver's
        ``inputs`` and ``inputs_error``); the biases stay, so they cancel. Then
        the driver measures the module again with ``W̄`` in place
        (``ModuleStats.remeasure``): ``G'' = Z''ᵀZ''`` and ``E'' = Z''ᵀ(Z − Z'')``
        of the output map's new input ``Z''`` feed the level-2 re-fit and the
        scores (Alg. 2's ``X̂2 ← post-process(Ŷ1)``).
        """
        S = module.backend.gram(module.inputs, device)
        E = module.inputs_error.to(device)
        every = torch.arange(S.shape[0], device=device)
        W_bar = tuple(refit_output_map(w.detach(), S, every, E, ridge=module.ridge) for w in module.W_in)
        again = module.remeasure(W_bar)
        return W_bar, again.gram().to(device), again.output_error.to(device)

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
            biases = tuple(_detached(b, device) for b in module.b_in)
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
