"""The budget: cost model, layer weighting, and per-layer sizes by one threshold.

DESIGN §1.4. Every prunable module has a cost per unit (MACs or parameters) and
a curve ``r(k)`` of the relative output error left when it keeps ``k`` units
(``r(0) = 1``, ``r(units) = 0``). One threshold ``τ`` on the weighted errors
``w_l · r_l(k)`` sets every module's size — ``k_l(τ) = min{k : w_l r_l(k) <= τ}`` —
and ``τ`` is bisected until the total cost meets the budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ModuleCost:
    """What one prunable module costs.

    Attributes
    ----------
    units : int
        Heads/groups or neurons.
    per_unit : float
        Cost of one unit (MACs at the reference length, or parameters).
    fixed : float
        Cost paid once while any unit is kept (0 by default): the key and
        value maps of a GQA layer whose units are query heads. ``k`` units
        cost ``k · per_unit + fixed · [k > 0]``.
    """

    units: int
    per_unit: float
    fixed: float = 0.0

    def cost(self, k) -> float:
        """What ``k`` kept units cost: ``k · per_unit + fixed · [k > 0]``."""
        return k * self.per_unit + (self.fixed if k > 0 else 0.0)


def head_macs(seq_len, hidden, head_dim, query_heads=1, kv_heads=1):
    """MACs of one attention unit on a sequence of ``s`` tokens (Kwon et al. 2022).

    ``s·d·d_h`` for each of its query, key, value and output projections and
    ``s²·d_h`` for each query head's scores and weighted sum:
    ``(2 q + 2 kv)·s·d·d_h + 2 q·s²·d_h`` (``4 s d d_h + 2 s² d_h`` for one MHA head).
    """
    s = seq_len
    return (2 * query_heads + 2 * kv_heads) * s * hidden * head_dim + 2 * query_heads * s * s * head_dim


def neuron_macs(seq_len, hidden, gated=False):
    """MACs of one MLP neuron: ``2·s·d`` (``3·s·d`` gated: gate, up and down)."""
    return (3 if gated else 2) * seq_len * hidden


def head_params(hidden, head_dim, query_heads=1, kv_heads=1, bias=True):
    """Parameters of one attention unit: its rows of ``W_Q, W_K, W_V``, its columns of ``W_O``."""
    rows = (query_heads + 2 * kv_heads) * head_dim
    return rows * hidden + query_heads * head_dim * hidden + (rows if bias else 0)


def neuron_params(hidden, gated=False, bias=True):
    """Parameters of one neuron: a row of ``W1`` (``Wg, Wu``), a column of ``W2``."""
    return (3 if gated else 2) * hidden + (0 if gated or not bias else 1)


def post_ln_layer_weights(num_layers):
    """STAT's weights for post-LN encoders: ``w_l = sqrt(L + 1 - l) + 1``, ``l = 1..L``.

    Deeper layers weigh less, so errors in early layers (which every later layer
    sees) are avoided first. Returns shape (L,).
    """
    l = np.arange(1, num_layers + 1)
    return np.sqrt(num_layers + 1 - l) + 1.0


def pre_ln_layer_weights(pivots):
    """Weights for pre-LN decoders: each layer's largest pivot over its fitted exponential trend.

    In a pre-LN decoder the residual stream grows roughly exponentially with
    depth, and so do the module outputs added to it; an error matters relative
    to that stream. With ``p_l`` the largest pivot of layer ``l``'s module (the
    output norm of its single most important unit), fit
    ``log p_l ≈ a·l + b`` by least squares and weight the relative error curve
    by ``w_l = p_l / exp(a·l + b)``: a layer whose outputs stand above the
    trend (in Llama-family models the first and last layers) is pruned less.

    Fit attention and MLP separately: each family's weights then scatter around
    1, so one threshold on the weighted errors balances heads against neurons.

    Parameters
    ----------
    pivots : array_like, shape (L,)
        Positive largest pivots, layer ``l = 0..L-1``.

    Returns
    -------
    ndarray, shape (L,)
    """
    p = np.asarray(pivots, dtype=np.float64)
    if p.ndim != 1 or not np.all(np.isfinite(p)):
        raise ValueError("pivots must be a finite vector, one per layer")
    p = np.maximum(p, np.finfo(np.float64).tiny)
    if p.size < 2:
        return np.ones_like(p)
    layers = np.arange(p.size)
    a, b = np.polyfit(layers, np.log(p), 1)
    return p / np.exp(a * layers + b)


def sizes_for_threshold(curves, weights, tau):
    """``k = min{k : w · r(k) <= τ}`` for every module; curves[i] has shape (units_i + 1,)."""
    sizes = []
    for curve, w in zip(curves, weights):
        ok = np.nonzero(w * np.asarray(curve) <= tau)[0]
        sizes.append(int(ok[0]) if ok.size else len(curve) - 1)
    return sizes


def total_cost(sizes, costs):
    """``Σ_i cost_i(k_i)`` (:meth:`ModuleCost.cost`) of ``sizes`` (modules,) under ``costs``."""
    return float(sum(c.cost(k) for k, c in zip(sizes, costs)))


def stepped_curve(curve, step):
    """``r(step · floor(k / step))``: a curve whose threshold sizes are multiples of ``step``.

    A module whose sizes must be multiples of ``step`` (a GQA layer keeping the
    same number of query heads in each of its ``step`` groups) is held at the
    error of the last allowed size until the next; ``min{k : w r(k) <= τ}`` on
    it is then always allowed. ``curve`` has shape (units + 1,) with ``units``
    a multiple of ``step``; returns the same shape.
    """
    r = np.asarray(curve, dtype=np.float64)
    if step < 1 or (r.size - 1) % step:
        raise ValueError(f"a curve over {r.size - 1} units cannot step by {step}")
    return r[(np.arange(r.size) // step) * step]


def choose_sizes(curves, costs, weights, fraction, *, iterations=100, minimum=None):
    """Per-module sizes that meet ``cost <= fraction · dense cost`` by bisecting ``τ``.

    With ``minimum`` every module keeps at least ``minimum_i`` units whatever
    ``τ``: ``k_i = max(minimum_i, min{k : w_i r_i(k) <= τ})``.

    Parameters
    ----------
    curves : list of ndarray, shapes (units_i + 1,)
        Relative error curves, non-increasing, ending at 0.
    costs : list of ModuleCost
    weights : array_like, shape (modules,)
        Error weight of each module (e.g. its layer's :func:`post_ln_layer_weights`).
    fraction : float in (0, 1]
        Fraction of the dense (prunable) cost to keep.
    minimum : sequence of int, shape (modules,), optional
        The fewest units each module keeps (e.g. one, so that no module is
        removed whole); a ValueError if they alone cost more than the budget.

    Returns
    -------
    (sizes, tau) : (list of int, float)
        The smallest ``τ`` whose sizes fit the budget: the most the budget allows.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"the budget fraction must lie in (0, 1], got {fraction}")
    if len(curves) != len(costs) or len(curves) != len(weights):
        raise ValueError("curves, costs and weights must have one entry per module")
    dense = total_cost([c.units for c in costs], costs)
    target = fraction * dense
    floor = [0] * len(costs) if minimum is None else [min(int(m), c.units) for m, c in zip(minimum, costs)]
    if len(floor) != len(costs):
        raise ValueError("minimum must have one entry per module")
    if total_cost(floor, costs) > target:
        raise ValueError(f"keeping the minimum of every module costs {total_cost(floor, costs) / dense:.4f} of the "
                         f"dense cost, above the budget's {fraction:.4f}")

    def sizes(tau):
        return [max(k, m) for k, m in zip(sizes_for_threshold(curves, weights, tau), floor)]

    lo, hi = 0.0, float(max(weights)) * 1.0 + 1e-12  # at τ = hi every module keeps its minimum
    if total_cost(sizes(lo), costs) <= target:
        return sizes(lo), lo
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if total_cost(sizes(mid), costs) <= target:
            hi = mid
        else:
            lo = mid
    return sizes(hi), hi


def split_sizes(curves, costs, weights, families, fraction, share):
    """Sizes that take a set share of the removed cost from each family, one threshold per family.

    With dense cost ``D`` (attention ``A``, MLP ``D − A``) and budget ``μ``, the
    removed cost is ``(1 − μ) D``. The attention family keeps
    ``A − share · (1 − μ) D`` (clipped to ``[0, min(A, μ D)]``), its sizes from
    :func:`choose_sizes` on its own modules; the MLP family then gets the rest
    of the budget, ``μ D`` minus what attention kept, the same way. ``share =
    A / D`` keeps the fraction ``μ`` of each family ("proportional"); the
    paper's single threshold over both families sets the split from the curves
    instead.

    Parameters
    ----------
    curves, costs, weights
        As :func:`choose_sizes`, one entry per module.
    families : sequence of {"attention", "mlp"}, shape (modules,)
    fraction : float in (0, 1]
    share : float in [0, 1] or "proportional"
        Fraction of the removed cost taken from attention.

    Returns
    -------
    (sizes, taus) : (list of int, dict)
        Sizes in module order, and each family's threshold (``None`` for a
        family kept whole or removed whole).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"the budget fraction must lie in (0, 1], got {fraction}")
    families = list(families)
    if len(families) != len(costs) or set(families) - {"attention", "mlp"}:
        raise ValueError("families must give 'attention' or 'mlp' for every module")
    dense = total_cost([c.units for c in costs], costs)
    member = {f: [i for i, g in enumerate(families) if g == f] for f in ("attention", "mlp")}
    family_dense = {f: total_cost([costs[i].units for i in at], [costs[i] for i in at]) for f, at in member.items()}
    if share == "proportional":
        share = family_dense["attention"] / dense
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be a number in [0, 1] or 'proportional', got {share!r}")
    sizes, taus = [0] * len(costs), {}
    left = fraction * dense
    for family, target in (("attention", family_dense["attention"] - share * (1 - fraction) * dense), ("mlp", None)):
        at = member[family]
        target = left if target is None else min(max(target, 0.0), family_dense[family], left)
        if not at:
            continue
        part = min(target / family_dense[family], 1.0) if family_dense[family] > 0 else 1.0
        if part <= 0:
            chosen, taus[family] = [0] * len(at), None
        else:
            chosen, tau = choose_sizes([curves[i] for i in at], [costs[i] for i in at],
                                       [weights[i] for i in at], part)
            taus[family] = None if part == 1.0 else tau
        for i, k in zip(at, chosen):
            sizes[i] = k
        left -= total_cost(chosen, [costs[i] for i in at])
    return sizes, taus


def uniform_sizes(costs, fraction):
    """The same kept fraction in every module: the baselines' sizes.

    Each module keeps ``floor(fraction · units)``; the budget this leaves unused
    then goes, one unit at a time, to the modules with the largest rounded-off
    remainders whose unit still fits, so the baseline spends the budget as fully
    as the threshold search does.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"the budget fraction must lie in (0, 1], got {fraction}")
    exact = [fraction * c.units for c in costs]
    sizes = [int(np.floor(x + 1e-9)) for x in exact]
    left = fraction * total_cost([c.units for c in costs], costs) - total_cost(sizes, costs)
    return spend_leftover(sizes, exact, costs, left)


def spend_leftover(sizes, exact, costs, left):
    """Hand the budget that rounding left unspent back, one unit a module, most rounded-down first.

    Rounding real sizes ``exact`` to integers ``sizes`` leaves ``left`` of the
    budget unspent. Visit every module once, in increasing rounded-off
    remainder ``sizes_i − exact_i`` (ties in module order), and give module
    ``i`` one more unit when it has one (``sizes_i < units_i``) and the unit
    still fits (``per_unit_i <= left + 1e-9``); each unit given takes
    ``per_unit_i`` off ``left``. A module gains at most one unit, and since
    ``left`` only falls, a module skipped once would never fit later: the pass
    equals the greedy that repeatedly gives a unit to the most rounded-down
    module, not yet given one, whose unit fits.

    :func:`uniform_sizes` (floored sizes) and
    :func:`statlab.methods.slimllm.sizes_for_shares` (rounded sizes) both end
    with it.

    Parameters
    ----------
    sizes : array_like of int, shape (modules,)
        Rounded sizes, ``0 <= sizes_i <= units_i``.
    exact : array_like of float, shape (modules,)
        The real sizes they were rounded from.
    costs : list of ModuleCost
    left : float
        Budget still unspent, ``target − total_cost(sizes, costs)``, as the
        caller computed it (the 1e-9 slack is absolute, so how the total was
        summed can matter).

    Returns
    -------
    list of int, shape (modules,)
        ``sizes`` with at most one unit added to each module; their cost is at
        most ``total_cost(sizes, costs) + left`` (up to the slack).
    """
    sizes = [int(k) for k in sizes]
    if not len(sizes) == len(exact) == len(costs):
        raise ValueError(f"sizes, exact and costs must have one entry per module, "
                         f"got {len(sizes)}, {len(exact)} and {len(costs)}")
    for i in sorted(range(len(sizes)), key=lambda i: sizes[i] - exact[i]):
        if sizes[i] < costs[i].units and costs[i].per_unit <= left + 1e-9:
            sizes[i] += 1
            left -= costs[i].per_unit
    return sizes
