"""FLAP (An, Zhao, Yu, Tang, Wang, AAAI 2024; arXiv 2312.11983): fluctuation metric, adaptive structure, bias compensation.

FLAP prunes attention heads and MLP channels of a dense model without
retraining, in three steps, all from one pass over the calibration data:

1. **Fluctuation metric** (the paper's WIFV, "weighted input feature
   variance"): an input channel ``j`` of an output map ``W`` (``W_O``, or
   ``W2`` / ``down_proj``) whose activation barely fluctuates around its mean
   can be replaced by that mean, and what is lost is its variance carried
   through ``W``: ``S_j = var_j · ‖W[:, j]‖²``, ``var_j`` the sample variance of
   channel ``j`` over the calibration tokens.
2. **Adaptive structure** (the paper's AL-AM: adaptive across layers and
   modules): the scores of every module are standardised,
   ``Ŝ = (S − mean S) / std S`` over the module's channels, so that one global
   threshold compares heads and neurons of all layers; every unit above it is
   kept, so each layer and module ends with its own size.
3. **Baseline bias compensation**: the removed channels are replaced by their
   calibration mean, folded into the output bias,
   ``b' = b + W[:, J] · mean[J]`` (``J`` the removed channels), and ``W`` keeps
   the kept columns unchanged — no least-squares fit.

The paper's text was not at hand here; the formulas follow the authors'
released code (github.com/CASIA-IVA-Lab/FLAP, ``lib/layerwrapper.py``
``BiasGPT`` for the statistics, ``lib/prune.py`` ``prune_flap`` / ``compress``
for the metric, structure and compensation), read for the formulas only.

Choices, and deviations forced by the protocol:

- **Variance** from what the driver captures — the Gram diagonal ``G_jj``,
  the mean ``μ_j`` and the token count ``N`` — as the unbiased sample variance
  ``var_j = (G_jj − N μ_j²) / (N − 1)`` over non-padded tokens (the code's
  running update is an online version of the same; every module sees the same
  ``N``, so ``N`` or ``N − 1`` ranks and standardises identically).
- **Heads** (code): the attention metric is squared per channel,
  ``S_j²``; a head's standardised score is the *mean* over its channels of the
  channel scores standardised over all ``d`` channels of the layer's ``W_O``;
  within a module (uniform structure, and the order of the kept units) a
  head's score is the sum of its ``S_j²``. The two orders agree: the
  standardisation is affine. MLP channels use ``S_j`` itself.
- **GQA** (the code has none): a unit is a KV group, and its score averages
  (or sums) over all ``heads_per_unit · head_dim`` columns it owns in ``W_O``.
- **Standardisation**: ``std`` with ``N − 1`` (torch's default, as in the
  code); a module whose scores do not vary (or that has one channel) gets
  standardised scores of 0.
- **Threshold and budget**: the code weighs a head as ``512 / 3`` neurons
  (LLaMA-7B's parameter ratio) and takes the cut whose cumulative cost is
  *nearest* the target. Here the costs are the driver's (MACs or parameters,
  :class:`~statlab.reference.budget.ModuleCost`) and the budget must be met
  (``cost ≤ fraction · dense``): units are taken in decreasing standardised
  score while they fit; the threshold is the score of the first unit that does
  not, and the units below it that still fit (only cheaper ones can: neurons
  after a head) are then added in the same order, so the budget is spent to
  within one unit, as :func:`~statlab.reference.budget.uniform_sizes` does.
  Ties go to the earlier module, then the unit of lower index.
- **At least one unit per module** (``min_units=1``): the code may empty a
  module; here each module keeps its best ``min_units`` units first, when the
  budget affords them all (otherwise no floor applies, and at extreme budgets
  modules are removed, their output becoming the compensation bias).
- **Structures**: ``structure="global"`` (AL-AM, the paper's and the code's
  default) or ``"uniform"`` (UL-UM: the same kept fraction in every module,
  units by the unstandardised metric). The code's AL-MM and UL-MM need the
  number of removed heads set by hand and are not offered.
- **Dense statistics**: the code computes every statistic on the dense model
  and prunes at the end, so ``propagates = False``; the compensation uses the
  dense means.
- **Encoders** (BERT, DistilBERT, post-LN): applied as to decoders; their
  output maps have biases, to which the compensation is added. A decoder's
  ``o_proj`` / ``down_proj`` gets the compensation as a new bias (the plan
  stores it). Nothing is removed: no bias is added.
- **Backends**: the metric needs only the Gram diagonal, read through
  :meth:`~statlab.backends.Backend.unit_blocks` (the Gram's diagonal under
  ``backend="fast"``, ``Σ_t Z_tj²`` of the matrix under ``"reference"``);
  everything else is torch fp64 on the CPU.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from statlab.reference import budget as budget_lib

from .base import ModuleStats, PruningMethod, Selection, SizeChoice, keep_top, unit_columns

STRUCTURES = ("global", "uniform")

# --------------------------------------------------------------------------- the metric


def channel_variance(gram_diagonal, mean, rows: int) -> torch.Tensor:
    """Unbiased sample variance of every channel, ``(G_jj − N μ_j²) / (N − 1)``: (n,) fp64, clamped at 0.

    ``gram_diagonal`` is ``Σ_t Z_tj²`` and ``mean`` ``μ_j`` over the ``rows``
    (``N``) tokens; fewer than two tokens give zeros.
    """
    g = torch.as_tensor(gram_diagonal).to(dtype=torch.float64, device="cpu")
    mu = torch.as_tensor(mean).to(g)
    N = int(rows)
    if N < 2:
        return torch.zeros_like(g)
    return ((g - N * mu * mu) / (N - 1)).clamp_min(0.0)


def fluctuation_metric(W_out: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """FLAP's WIFV, ``S_j = var_j · ‖W_out[:, j]‖²`` for every input channel ``j``: (n,) fp64.

    ``W_out`` is ``(out, n)``, ``variance`` ``(n,)``.
    """
    W = W_out.detach().to(dtype=torch.float64, device="cpu")
    return variance.to(W) * W.square().sum(dim=0)


def channel_scores(module: ModuleStats) -> torch.Tensor:
    """Per-column scores of ``module``'s output map: ``S_j²`` for attention (as the code), ``S_j`` for MLPs: (n,)."""
    n = module.W_out.shape[1]
    diagonal = module.backend.unit_blocks(module.stats, n, 1)[0, 0]  # (n,): Σ_t Z_tj²
    S = fluctuation_metric(module.W_out, channel_variance(diagonal, module.mean, module.rows))
    return S.square() if module.kind == "attention" else S


def standardise(x: torch.Tensor) -> torch.Tensor:
    """``(x − mean x) / std x`` (``std`` with ``n − 1``); zeros where ``std`` is 0 or undefined."""
    x = x.to(torch.float64)
    if x.numel() < 2:
        return torch.zeros_like(x)
    std = x.std()
    if not torch.isfinite(std) or std <= 0:
        return torch.zeros_like(x)
    return (x - x.mean()) / std


def unit_scores(scores: torch.Tensor, unit_size: int, *, standardised: bool) -> np.ndarray:
    """One score per unit from its ``unit_size`` consecutive columns: (units,).

    ``standardised=False``: the sum of the columns' scores (the within-module
    order, and the uniform structure). ``standardised=True``: the columns
    standardised over the whole module (:func:`standardise`), then averaged
    per unit — the scores one global threshold compares.
    """
    x = standardise(scores) if standardised else scores.to(torch.float64)
    per_unit = x.reshape(-1, unit_size)
    return (per_unit.mean(dim=1) if standardised else per_unit.sum(dim=1)).numpy()


# --------------------------------------------------------------------------- the adaptive structure


def global_sizes(scores: list, costs: list, fraction: float, *, min_units: int = 1):
    """Sizes from one global threshold on standardised unit scores, meeting ``fraction`` of the cost.

    Parameters
    ----------
    scores : list of array_like, shapes (units_i,)
        Standardised score of every unit of every module.
    costs : list of ModuleCost
    fraction : float in (0, 1]
    min_units : int
        Every module first keeps its ``min(min_units, units_i)`` best units,
        when the budget affords all of them; otherwise no module gets a floor.

    Returns
    -------
    (sizes, threshold) : (list of int, float or None)
        ``threshold`` is the score of the first unit, in decreasing order, that
        did not fit (None if every unit fits). Units below it are still taken,
        in the same order, while they fit (see the module docstring).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"the budget fraction must lie in (0, 1], got {fraction}")
    if len(scores) != len(costs):
        raise ValueError(f"scores and costs must have one entry per module, got {len(scores)} and {len(costs)}")
    target = fraction * budget_lib.total_cost([c.units for c in costs], costs)
    floor = [min(int(min_units), c.units) for c in costs]
    if budget_lib.total_cost(floor, costs) > target + 1e-9:
        floor = [0] * len(costs)
    entries = []  # (score, module, rank within the module) of every unit beyond the floor
    for i, s in enumerate(scores):
        s = np.asarray(s, dtype=np.float64)
        ranked = np.sort(s, kind="stable")[::-1]
        entries += [(-float(ranked[r]), i, r) for r in range(floor[i], s.size)]
    entries.sort()
    sizes = list(floor)
    left = target - budget_lib.total_cost(sizes, costs)
    threshold = None
    for negative, i, _ in entries:
        if costs[i].per_unit <= left + 1e-9:
            sizes[i] += 1
            left -= costs[i].per_unit
        elif threshold is None:
            threshold = -negative
    return sizes, threshold


# --------------------------------------------------------------------------- the compensation


def compensated_bias(W_out: torch.Tensor, b_out, mean, dropped_cols) -> torch.Tensor:
    """``b + W_out[:, J] · μ[J]``: the removed channels' mean contribution added to the bias (0 if none): (out,) fp64."""
    W = W_out.detach().to(dtype=torch.float64, device="cpu")
    mu = torch.as_tensor(mean).to(W)
    J = torch.as_tensor(dropped_cols, dtype=torch.int64)
    b = torch.zeros(W.shape[0], dtype=torch.float64) if b_out is None else b_out.detach().to(W)
    return b + W[:, J] @ mu[J]


# --------------------------------------------------------------------------- the method


class Flap(PruningMethod):
    """FLAP: fluctuation metric, one global threshold on standardised scores, baseline bias compensation.

    Parameters
    ----------
    structure : {"global", "uniform"}
        One threshold across all layers and both module types (AL-AM, default),
        or the same kept fraction in every module (UL-UM).
    compensate : bool
        Fold the removed channels' mean into the output bias (default).
    min_units : int
        Units every module keeps when the budget affords it (global structure).
    """

    name = "flap"
    sizes_read_data = True  # the global threshold reads the dense pass
    propagates = False  # FLAP's statistics all come from the dense model

    def __init__(self, *, seed: int = 0, ridge: float = 0.0, structure: str = "global", compensate: bool = True,
                 min_units: int = 1):
        super().__init__(seed=seed, ridge=ridge)
        if structure not in STRUCTURES:
            raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}")
        self.structure, self.compensate, self.min_units = structure, bool(compensate), int(min_units)
        if structure != "global" or not self.compensate:
            parts = ([structure] if structure != "global" else []) + ([] if self.compensate else ["no compensation"])
            self.label = f"flap ({', '.join(parts)})"

    def sizes(self, modules, costs, fraction, adapter):
        # Mappings keyed by module, or sequences in the same order: the sizes go back in that order.
        modules = list(modules.values()) if isinstance(modules, Mapping) else list(modules)
        costs = list(costs.values()) if isinstance(costs, Mapping) else list(costs)
        if self.structure == "uniform":
            return SizeChoice(budget_lib.uniform_sizes(costs, fraction), info={"flap_structure": "uniform"})
        scores = [unit_scores(channel_scores(m), m.unit_size, standardised=True) for m in modules]
        sizes, threshold = global_sizes(scores, costs, fraction, min_units=self.min_units)
        return SizeChoice(sizes, info={"flap_structure": "global", "flap_threshold": threshold})

    def select(self, module, k):
        selection = keep_top(module, unit_scores(channel_scores(module), module.unit_size, standardised=False), k)
        if not self.compensate or k == module.units:
            return selection
        dropped = sorted(set(range(module.units)) - set(selection.units))
        bias = compensated_bias(module.W_out, module.b_out, module.mean, unit_columns(dropped, module.unit_size))
        return Selection(selection.units, selection.w_out, b_out=bias)
