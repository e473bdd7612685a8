"""Kwon et al. 2022 — "A Fast Post-Training Pruning Framework for Transformers" (NeurIPS 2022, arXiv 2204.09656).

Retraining-free structured pruning in three stages, all from a small sample
of data. Every head and every MLP neuron carries a mask variable ``m``
(``m = 1``: dense); the loss after pruning is approximated to second order
around ``m = 1`` with the empirical Fisher ``I = Σ_x g_x g_xᵀ``,
``g_x = ∂ℓ(x; m)/∂m`` (the paper's §3: the gradient term vanishes for a
converged model, and the Hessian is replaced by the Fisher), so that removing
the units ``P`` costs about ``½ 1_Pᵀ I 1_P``.

1. **Mask search** (§4.1, Algorithm 1): with the *diagonal* Fisher the cost of
   removing ``P`` is additive, ``½ Σ_{i∈P} I_ii``; every head and every neuron
   is ranked globally by ``I_ii``, and for every number ``n`` of heads kept
   (the ``n`` most important), the rest of the budget buys the most important
   neurons that fit; the ``n`` with the largest kept importance wins
   (:func:`search_masks`).
2. **Mask rearrangement** (§4.2): within each layer, with the layer's
   block-diagonal Fisher ``I_l``, the kept count fixed by stage 1, the pruned
   set is improved by greedy swaps that lower ``1_Pᵀ I_l 1_P`` — correlated
   units whose gradients cancel can be removed together
   (:func:`rearrange_units`).
3. **Mask tuning** (§4.3): the kept units' mask values become real numbers,
   fitted layer by layer by linear least squares so that the pruned layer's
   output reconstructs the target output; the paper solves it with LSMR
   (:func:`tuned_scales`). The scales are folded into the output map:
   ``W_out' = W_out[:, kept] · diag(s_u per column of unit u)``.

How it maps onto statlab, and every choice where the paper is silent or
statlab's setting differs:

- **Units**: a "head" is the driver's attention unit — a head for BERT /
  DistilBERT, a KV group (its query heads and its K/V head) for GQA decoders —
  so one mask multiplies all ``unit_size`` context columns of the unit, the
  input of ``W_O``; an MLP neuron's mask multiplies its column of the input of
  ``W2`` / ``down_proj``. The masks are applied by forward pre-hooks on the
  output maps (:func:`mask_gradients`), the same place the driver captures.
- **Per-example gradients**: each example gets its own copy of the masks (a
  ``(batch, units)`` tensor of ones), so one backward pass of the summed
  per-example losses yields every example's gradient ``g_x`` exactly (an
  example's mask touches only that example). The authors' code squares
  gradients of mini-batch mean losses; the paper's Fisher is over examples,
  which this reproduces.
- **Loss** (``target``; the paper fine-tunes task models and uses their labels):

  ``"labels"``
      A task model (``config.num_labels``) with ``labels`` in every
      calibration batch: the model's own loss (a mean over the batch's
      examples, multiplied back by the batch size) — the paper's setting.
      The task models of statlab arrive with the task-model work; this is the
      hook they plug into.
  ``"next-token"``
      Causal LMs: the next-token negative log-likelihood of the calibration
      text itself, summed over each sequence's real positions — the text is
      the label, so this is the paper's empirical Fisher. (A KL divergence to
      the dense model's own distribution has zero gradient at ``m = 1``.)
  ``"hidden"``
      Bare encoders (no head): the dense model's last hidden states ``h`` are
      the targets of a Gaussian observation model ``y ~ N(h(x; m), I)`` and
      ``y`` is *sampled* from it at ``m = 1`` (one draw ``ε`` per real token,
      seeded), giving ``g_x = −Σ_t J_tᵀ ε_t``: the Monte-Carlo Fisher whose
      mean ``Σ_t diag(J_tᵀ J_t)`` is the Gauss–Newton matrix of the MSE to the
      dense hidden states. Plain MSE to ``h`` itself, like the KL, has zero
      gradient at ``m = 1``. The noise scale only scales the Fisher, which
      changes neither stage 1 nor stage 2.
  ``"auto"`` (default) picks ``labels`` when every batch has labels and the
  model takes them, else ``next-token`` for causal LMs, else ``hidden``. The
  choice is ``self.target`` and is recorded in the plan
  (``meta["kwon"]["target"]``) and in compare JSONs through it.
- **Budget** (Algorithm 1 under statlab's cost model): statlab's ``costs``
  give every module its per-unit cost (MACs at the reference length, or
  parameters) and the budget is ``fraction`` of the dense total. The paper's
  head and neuron costs are one number each; here the running cost of the
  ``n`` best heads is a cumulative sum of their modules' per-unit costs (equal
  within a family for the models here), so the search is unchanged. ``n = 0``
  (no head at all) is allowed; the authors' loop starts at one head.
- **Rearrangement** (§4.2; the authors' code for the order of the swaps): the
  initial pruned set of a layer is stage 1's (its lowest-``I_ii`` units, the
  same as the layer's share of the global ranking). The kept units are
  visited in increasing ``I_ii``; each is added to the pruned set and then the
  unit whose removal from the pruned set leaves the smallest
  ``1_Pᵀ I_l 1_P`` goes back (possibly the one just added). No step raises the
  objective, so the result is never worse than stage 1's mask on it. With
  ``E`` examples ``I_l`` has rank at most ``E`` (16 windows on SmolLM2 make a
  rank-16 matrix): the swaps then follow few directions.
- **Mask tuning target**. The paper reconstructs each layer's output of the
  *original* model (the authors' code uses a teacher mask searched at the
  looser budget ``√C`` instead, and includes the residual branch in the
  target before the LayerNorm). statlab's driver hands the method the Gram
  ``G' = Z'ᵀZ'`` of the output map's input on the *pruned* model's activations
  (``propagates = True``); the least-squares system is
  ``(AᵀA)_uv = ⟨Z'_u W_uᵀ, Z'_v W_vᵀ⟩ = Σ (W_uᵀW_v) ∘ G'_uv`` over the units'
  column blocks. Its right-hand side is, with ``dense_target=True``
  (default), ``⟨Z'_u W_uᵀ, Z Wᵀ⟩``: the *dense* model's output of the map
  (``Z`` the dense activations), from the cross moment ``Z'ᵀ(Z − Z')`` the
  driver supplies (``dense_outputs`` in ``needs``: ``ModuleStats.output_error``,
  as for GOA's recovery); with ``dense_target=False`` the
  unpruned module on the pruned model's inputs (``Z' Wᵀ``, the driver's own
  target; no extra passes). Neither includes the residual branch: the
  output map's bias and the residual stream are left as they are. Without
  propagation (``propagate=False``) both targets are the dense module on
  dense inputs. The authors' code skips tuning the first layer's attention
  and fits an intercept it then discards; neither is followed here.
- **LSMR** (``scipy.sparse.linalg.lsmr``): the system is formed from Grams,
  so ``A`` itself (tokens · outputs rows) never exists; its least-squares
  problem equals ``min ‖R s − R⁻ᵀ Aᵀy‖`` with ``AᵀA = RᵀR`` (Cholesky), which
  LSMR solves for ``x = s − 1`` (the authors' shift: unobserved directions
  keep ``s = 1``), with ``damp`` from statlab's relative ``ridge``
  (``damp² = ridge · mean diag AᵀA``; 0 by default; the authors pass
  ``damp=1`` on their unnormalised system, a negligible regulariser). The
  authors' safeguard is kept: when LSMR does not converge or a scale leaves
  ``[−10, 10]``, that module and every later one keep ``s = 1`` (a warning
  says where).
- **Propagation**: the stage-1/2 masks are fixed before any pruning (from the
  dense model's gradients, as in the paper); only stage 3 sees the pruned
  layers below.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping

import numpy as np
import scipy.sparse.linalg
import torch

from statlab.inputs import model_inputs
from statlab.reference import budget as budget_lib
from statlab.threads import scipy_blas

from .base import ModuleStats, PruningMethod, Selection, SizeChoice, restricted_w_out

TARGETS = ("auto", "labels", "next-token", "hidden")
SCALE_LIMIT = 10.0  # the authors' safeguard on tuned mask values
KINDS = ("attention", "mlp")


# --------------------------------------------------------------------------- stage 1: Fisher and mask search


def fisher_diagonal(grads) -> np.ndarray:
    """Diagonal empirical Fisher ``I_ii = Σ_x g_x,i²`` from per-example gradients ``grads (examples, units)``: (units,)."""
    g = np.asarray(grads, dtype=np.float64)
    return (g * g).sum(axis=0)


def search_masks(fisher, costs, kinds, fraction) -> list:
    """Kwon et al. Algorithm 1: the kept units of every module under ``cost <= fraction · dense cost``.

    Heads (``kinds[i] == "attention"``) and neurons are ranked globally by
    their diagonal Fisher; for ``n = 0, 1, ...`` heads kept (the ``n`` best),
    the most important neurons whose cumulative cost fits the rest of the
    budget are kept, and the ``n`` maximising the kept Fisher
    ``Σ_heads I + Σ_neurons I`` wins (the fewest heads among ties).

    Parameters
    ----------
    fisher : list of ndarray, shapes (units_i,)
        Diagonal Fisher of every module's units.
    costs : list of ModuleCost
        Per-unit cost of every module (same order).
    kinds : list of {"attention", "mlp"}
    fraction : float in (0, 1]

    Returns
    -------
    list of list of int
        The kept units of every module, ascending.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"the budget fraction must lie in (0, 1], got {fraction}")
    if not len(fisher) == len(costs) == len(kinds):
        raise ValueError("fisher, costs and kinds must have one entry per module")
    dense = budget_lib.total_cost([c.units for c in costs], costs)
    target = fraction * dense + 1e-9 * max(dense, 1.0)

    def ranked(kind):
        """(module, unit) of every unit of ``kind`` by decreasing Fisher, with cumulative cost and Fisher."""
        members = [(i, u, float(f[u]), costs[i].per_unit) for i, f in enumerate(fisher) if kinds[i] == kind
                   for u in range(len(f))]
        order = sorted(range(len(members)), key=lambda j: -members[j][2])  # stable: module, then unit order
        members = [members[j] for j in order]
        cum_cost = np.concatenate([[0.0], np.cumsum([m[3] for m in members])])
        cum_fisher = np.concatenate([[0.0], np.cumsum([m[2] for m in members])])
        return members, cum_cost, cum_fisher

    heads, head_cost, head_fisher = ranked("attention")
    neurons, neuron_cost, neuron_fisher = ranked("mlp")
    n_max = int(np.searchsorted(head_cost, target, side="right")) - 1
    ns = np.arange(n_max + 1)
    ms = np.searchsorted(neuron_cost, target - head_cost[ns], side="right") - 1  # most neurons that still fit
    best = int(np.argmax(head_fisher[ns] + neuron_fisher[ms]))
    kept = [[] for _ in fisher]
    for i, u, _, _ in heads[:ns[best]] + neurons[:ms[best]]:
        kept[i].append(u)
    return [sorted(k) for k in kept]


# --------------------------------------------------------------------------- stage 2: rearrangement


def block_objective(grads, pruned) -> float:
    """``1_Pᵀ I_l 1_P = Σ_x (Σ_{i∈P} g_x,i)²``: twice the estimated loss increase of removing ``pruned``."""
    g = np.asarray(grads, dtype=np.float64)
    s = g[:, list(pruned)].sum(axis=1)
    return float(s @ s)


def rearrange_units(grads, kept) -> list:
    """Kwon et al. §4.2: greedy swaps lowering ``1_Pᵀ I_l 1_P`` at a fixed kept count; the new kept units, ascending.

    Visits the kept units in increasing diagonal Fisher; each joins the pruned
    set ``P``, and the member of ``P`` whose removal leaves the smallest
    objective leaves it (ties: the unit just added, i.e. no swap). With
    ``F = I_l`` and ``c_i = Σ_{j∈P} F_ij``, removing ``i`` leaves
    ``1ᵀF_PP1 − 2c_i + F_ii``, so each step costs ``O(units)``.

    Parameters
    ----------
    grads : ndarray, shape (examples, units)
        Per-example mask gradients of one module.
    kept : sequence of int
        Stage 1's kept units of that module.
    """
    g = np.asarray(grads, dtype=np.float64)
    n = g.shape[1]
    kept = sorted(int(u) for u in kept)
    if len(kept) in (0, n):
        return kept
    F = g.T @ g  # (units, units): the layer's block of the empirical Fisher
    diag = F.diagonal()
    in_pruned = np.ones(n, dtype=bool)
    in_pruned[kept] = False
    c = F[:, in_pruned].sum(axis=1)
    total = float(c[in_pruned].sum())
    for j in sorted(kept, key=lambda u: (diag[u], u)):
        total += 2 * c[j] + F[j, j]
        c += F[:, j]
        in_pruned[j] = True
        members = np.flatnonzero(in_pruned)
        left = total - 2 * c[members] + diag[members]
        i = int(members[np.argmin(left)])
        if left[members == j][0] <= left.min() + 1e-12 * abs(total):  # no gain over removing j again: no swap
            i = j
        total = float(total - 2 * c[i] + diag[i])
        c -= F[:, i]
        in_pruned[i] = False
    return np.flatnonzero(~in_pruned).tolist()


# --------------------------------------------------------------------------- stage 3: mask tuning


def unit_system(W: torch.Tensor, G: torch.Tensor, unit_size: int, error=None):
    """Normal equations of the per-unit scale fit: ``(AᵀA (units, units), Aᵀy (units,))`` in fp64.

    Column ``u`` of ``A`` is ``vec(Z'_u W_uᵀ)`` (unit ``u``'s share of the
    output), so ``(AᵀA)_uv = Σ_{a∈u, b∈v} (WᵀW)_ab G_ab`` with ``G = Z'ᵀZ'``.
    The target is ``y = vec(Z Wᵀ)``: ``Z = Z'`` without ``error``
    (``(Aᵀy)_u = Σ_v (AᵀA)_uv``), else ``error = Z'ᵀ(Z − Z')`` adds
    ``Σ_{a∈u, b} (WᵀW)_ab error_ab``.

    Parameters
    ----------
    W : Tensor, shape (out, units · unit_size)
    G : Tensor, shape (units · unit_size, units · unit_size)
    error : Tensor of G's shape, optional
    """
    G = G.to(torch.float64)
    W = W.detach().to(device=G.device, dtype=torch.float64)
    n = W.shape[1] // unit_size
    WtW = W.T @ W
    AtA = (WtW * G).reshape(n, unit_size, n, unit_size).sum(dim=(1, 3))
    Aty = AtA.sum(dim=1)
    if error is not None:
        Aty = Aty + (WtW * error.to(G)).reshape(n, unit_size, -1).sum(dim=(1, 2))
    return AtA, Aty


def tuned_scales(AtA, Aty, *, damp: float = 0.0):
    """Kwon et al. §4.3: mask values ``s = argmin ‖A s − y‖² + damp² ‖s − 1‖²`` by LSMR; ``(s (k,), converged)``.

    ``A`` is known through its normal equations only (:func:`unit_system`
    restricted to the kept units); with ``AᵀA = RᵀR`` (Cholesky, a tiny
    relative jitter where it is singular) the problem equals
    ``min ‖R x − d‖² + damp² ‖x‖²`` with ``x = s − 1`` and
    ``d = R⁻ᵀ(Aᵀy − AᵀA 1)``, which ``scipy.sparse.linalg.lsmr`` solves.
    ``converged`` is False when LSMR stopped on its iteration or condition
    limit (``istop`` 3, 6, 7).
    """
    M = torch.as_tensor(AtA, dtype=torch.float64).cpu()
    b = torch.as_tensor(Aty, dtype=torch.float64).cpu()
    k = M.shape[0]
    if k == 0:
        return np.ones(0), True
    scale = float(M.diagonal().mean())
    if not scale > 0:
        return np.ones(k), True  # the kept units put out nothing: any scale fits
    jitter, eye = 0.0, torch.eye(k, dtype=torch.float64)
    while True:
        L, info = torch.linalg.cholesky_ex(M + jitter * scale * eye)
        if int(info) == 0:
            break
        jitter = 1e-14 if jitter == 0 else jitter * 100
        if jitter > 1e-4:
            return np.ones(k), False
    rhs = (b - M.sum(dim=1)).unsqueeze(1)
    d = torch.linalg.solve_triangular(L, rhs, upper=False).squeeze(1)  # R⁻ᵀ c with R = Lᵀ
    with scipy_blas():
        result = scipy.sparse.linalg.lsmr(L.T.numpy(), d.numpy(), damp=damp, atol=1e-12, btol=1e-12,
                                          maxiter=max(4 * k, 100))
    x, istop = result[0], int(result[1])
    return 1.0 + x, istop not in (3, 6, 7)


# --------------------------------------------------------------------------- the gradient pass


def resolve_target(model, adapter, calibration, target: str = "auto") -> str:
    """The loss of the Fisher pass: ``"labels"``, ``"next-token"`` or ``"hidden"`` (see the module docstring)."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    takes_labels = "labels" in inspect.signature(model.forward).parameters and hasattr(model.config, "num_labels")
    has_labels = all(isinstance(b, Mapping) and "labels" in b for b in calibration)
    lm = adapter.causal_lm and model.get_output_embeddings() is not None
    if target == "auto":
        return "labels" if takes_labels and has_labels and not lm else "next-token" if lm else "hidden"
    if target == "labels" and not (takes_labels and has_labels):
        raise ValueError("target='labels' needs a task model that takes labels (config.num_labels) and "
                         "'labels' in every calibration batch")
    if target == "next-token" and not lm:
        raise ValueError("target='next-token' needs a causal language model with an output head")
    return target


def _loss(model, inputs: dict, target: str, generator: torch.Generator) -> torch.Tensor:
    """The sum over the batch's examples of each example's loss (its gradient w.r.t. its own masks is ``g_x``)."""
    mask = inputs.get("attention_mask")
    if target == "labels":
        out = model(**inputs)
        return out.loss * inputs["input_ids"].shape[0]  # the task losses are means over the batch's examples
    inputs = {k: v for k, v in inputs.items() if k != "labels"}
    if target == "next-token":
        logits = model(**inputs).logits[:, :-1].float()  # (B, T-1, vocab)
        ids = inputs["input_ids"][:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids.reshape(-1),
                                                reduction="none").reshape(ids.shape)
        if mask is not None:
            nll = nll * (mask[:, 1:] * mask[:, :-1]).to(nll)
        return nll.sum()
    # the backbone's own output: output_hidden_states would make transformers install lasting hooks
    backbone = model.base_model
    accepted = inspect.signature(backbone.forward).parameters
    h = backbone(**{k: v for k, v in inputs.items() if k in accepted}).last_hidden_state  # (B, T, d)
    eps = torch.randn(h.shape, generator=generator, dtype=torch.float32).to(h)  # y = h_dense + ε
    if mask is not None:
        eps = eps * mask.unsqueeze(-1).to(eps)
    return -(eps * h).sum()  # ½‖h − y‖² at h = h_dense, up to a constant


def mask_gradients(model, blocks, calibration, target: str, *, seed: int = 0) -> dict:
    """Per-example gradients of the loss w.r.t. every unit mask at ``m = 1``.

    Forward pre-hooks on every output map multiply its input by per-example
    masks (``(batch, units)`` ones, each repeated over the unit's
    ``unit_size`` columns); one backward pass per batch then yields each
    example's gradient. The parameters' ``requires_grad`` flags are switched
    off for the pass and restored, the hooks removed, also on error.

    Returns
    -------
    dict
        ``{(layer, kind): ndarray (examples, units)}`` in fp64.
    """
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    dtype, device = params[0].dtype, params[0].device
    modules = [((b.index, kind), path, units, size) for b in blocks
               for kind, path, units, size in (("attention", b.attn_out, b.units, b.unit_size),
                                               ("mlp", b.mlp_out, b.mlp_units, 1))]
    masks, grads, handles = {}, {key: [] for key, *_ in modules}, []
    for key, path, _, size in modules:
        def hook(module, args, key=key, size=size):
            x, m = args[0], masks[key]
            if x.dim() != 3 or x.shape[0] != m.shape[0]:
                raise RuntimeError(f"layer {key[0]} {key[1]}: the output map's input has shape {tuple(x.shape)}, "
                                   f"expected (batch={m.shape[0]}, tokens, features) for per-example masks")
            return (x * m.repeat_interleave(size, dim=1).unsqueeze(1).to(x.dtype),) + tuple(args[1:])
        handles.append(model.get_submodule(path).register_forward_pre_hook(hook))
    generator = torch.Generator().manual_seed(seed)
    try:
        for p in params:
            p.requires_grad_(False)
        with torch.enable_grad():
            for batch in calibration:
                inputs = model_inputs(model, batch)
                B = inputs["input_ids"].shape[0]
                for key, _, units, _ in modules:
                    masks[key] = torch.ones(B, units, dtype=dtype, device=device, requires_grad=True)
                _loss(model, inputs, target, generator).backward()
                for key, m in masks.items():  # a map the loss never reached has no gradient: zeros
                    grads[key].append(torch.zeros(m.shape, dtype=torch.float64) if m.grad is None
                                      else m.grad.detach().double().cpu())
                masks.clear()
    finally:
        masks.clear()
        for h in handles:
            h.remove()
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    return {key: torch.cat(g).numpy() for key, g in grads.items()}


# --------------------------------------------------------------------------- the method


class Kwon(PruningMethod):
    """Kwon et al. 2022: Fisher mask search (Alg. 1), mask rearrangement (§4.2), LSMR mask tuning (§4.3).

    Parameters
    ----------
    target : {"auto", "labels", "next-token", "hidden"}
        The loss whose Fisher ranks the units (module docstring); after
        :meth:`prepare`, ``self.target`` is the one used.
    rearrange : bool
        Stage 2 (default on).
    tuning : bool
        Stage 3 (default on); False keeps the selected columns unscaled.
    dense_target : bool
        Stage 3 reconstructs the dense model's output of each output map
        (the driver's dense-output moments, default) rather than the unpruned map on the pruned
        model's inputs.
    """

    name = "kwon"
    needs = frozenset({"activations", "dense_outputs"})  # sizes come from the gradient pass: no dense pass
    # when it propagates; the dense outputs only for stage 3's default target
    propagates = True  # stage 3 fits each layer on the inputs the pruned layers below give it

    def __init__(self, *, seed: int = 0, ridge: float = 0.0, target: str = "auto", rearrange: bool = True,
                 tuning: bool = True, dense_target: bool = True):
        super().__init__(seed=seed, ridge=ridge)
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        self.target = target
        self.rearrange, self.tuning, self.dense_target = bool(rearrange), bool(tuning), bool(dense_target)
        if not (self.tuning and self.dense_target):
            self.needs = type(self).needs - {"dense_outputs"}
        self.grads, self.kept = None, {}
        self._stopped = None
        options = [o for o, on in (("no rearrangement", not rearrange), ("no tuning", not tuning),
                                   ("driver target", tuning and not dense_target)) if on]
        if options:
            self.label = f"kwon ({', '.join(options)})"

    def prepare(self, model, adapter, blocks, calibration):
        self.target = resolve_target(model, adapter, calibration, self.target)
        self.grads = mask_gradients(model, blocks, calibration, self.target, seed=self.seed)
        self.kept, self._stopped = {}, None

    def sizes(self, modules, costs, fraction, adapter):
        if self.grads is None:
            raise RuntimeError("Kwon.sizes needs the gradients of Kwon.prepare (run it through statlab.prune)")
        keys = list(self.grads)  # bottom-up, attention before MLP: the order of the driver's costs
        cost_list = list(costs.values()) if isinstance(costs, Mapping) else list(costs)
        if len(cost_list) != len(keys) or any(c.units != self.grads[k].shape[1] for c, k in zip(cost_list, keys)):
            raise ValueError("costs do not match the modules of the gradient pass")
        kept = search_masks([fisher_diagonal(self.grads[k]) for k in keys], cost_list, [k[1] for k in keys], fraction)
        searched, moved = kept, 0
        if self.rearrange:
            kept = [rearrange_units(self.grads[k], units) for k, units in zip(keys, kept)]
            moved = sum(len(set(a) - set(b)) for a, b in zip(kept, searched))
        self.kept = dict(zip(keys, kept))
        examples = int(next(iter(self.grads.values())).shape[0]) if keys else 0
        info = {"kwon": {"target": self.target, "examples": examples, "rearranged_units": moved,
                         "rearrange": self.rearrange, "tuning": self.tuning, "dense_target": self.dense_target}}
        return SizeChoice(dict(zip(costs, (len(k) for k in kept))), None, info)

    def _units(self, module: ModuleStats, k: int) -> list:
        """The kept units of stages 1–2; a size other than :meth:`sizes`' gets the ``k`` best, rearranged."""
        key = (module.layer, module.kind)
        if self.grads is None or key not in self.grads:
            raise RuntimeError(f"layer {module.layer} {module.kind}: no mask gradients; Kwon.prepare must run first")
        kept = self.kept.get(key)
        if kept is None or len(kept) != k:
            order = np.argsort(-fisher_diagonal(self.grads[key]), kind="stable")[:k]
            kept = rearrange_units(self.grads[key], order) if self.rearrange else sorted(order.tolist())
        return kept

    def select(self, module, k):
        return self._tuned(module, self._units(module, k))

    def _tuned(self, module, kept):
        w_out = restricted_w_out(module, kept)
        propagated = module.propagated
        if not self.tuning or self._stopped is not None:
            return Selection(kept, w_out)
        if propagated and not self.dense_target:
            G, error = module.gram(), None
        elif propagated:  # the dense target's cross moment, from the driver
            if module.output_error is None:
                raise RuntimeError(f"layer {module.layer} {module.kind}: no dense-output moment; Kwon et al.'s "
                                   "mask tuning runs through statlab.prune, which supplies it")
            G, error = module.gram(), module.output_error
        else:  # the one-pass variant: the driver's dense Gram, whose target is the dense module itself
            G, error = module.gram(), None
        if not kept:
            return Selection(kept, w_out)
        AtA, Aty = unit_system(module.W_out, G, module.unit_size, None if error is None else error.to(G.device))
        idx = torch.as_tensor(kept, device=AtA.device)
        M = AtA[idx][:, idx]
        damp = float(np.sqrt(module.ridge * float(M.diagonal().mean()))) if module.ridge else 0.0
        scales, converged = tuned_scales(M, Aty[idx], damp=damp)
        if not converged or np.abs(scales).max() > SCALE_LIMIT:
            self._stopped = (module.layer, module.kind)
            warnings.warn(f"kwon: mask tuning stopped at layer {module.layer} {module.kind} "
                          f"({'LSMR did not converge' if not converged else 'a scale left [-10, 10]'}); "
                          "this module and the later ones keep their masks at 1", stacklevel=2)
            return Selection(kept, w_out)
        per_column = torch.as_tensor(scales, dtype=torch.float64).repeat_interleave(module.unit_size)
        return Selection(kept, w_out * per_column[None, :])
