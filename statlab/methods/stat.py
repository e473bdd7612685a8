"""STAT (DESIGN §1.2–1.4): interpolative decompositions, least-squares corrections, sizes from error curves.

Sizes: each module's relative output-error curve ``r(k)`` from the dense pass,
weighted per layer (:func:`layer_weights`), and one threshold bisected to meet
the budget (:func:`statlab.reference.budget.choose_sizes`). Selection: the ID
of the (propagated) activations at that size, with the correction folded into
``W_out`` — by the module's backend (:mod:`statlab.backends`: :mod:`statlab.fast`
on Grams or :mod:`statlab.reference` on matrices).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import torch

from statlab.inputs import check_int
from statlab.models import check_attention_units
from statlab.records import KINDS, ModuleKey
from statlab.reference import budget as budget_lib
from statlab.reference.heads import group_rounds

from .base import (
    ModuleStats,
    PruningMethod,
    Selection,
    SizeChoice,
    refit_output_map,
    restricted_w_out,
    unit_columns,
    unit_energies,
)


ORDERS = {"joint": (KINDS,), "neurons first": (("mlp",), ("attention",))}
"""``Stat(order=...)``: its :attr:`~statlab.methods.PruningMethod.phases`."""


def prune_module(module: ModuleStats, k: int, *, curve: bool = False, ridge: float | None = None):
    """``(kept units, W_out' fp64 tensor, residual curve or None)`` of one module at ``k`` units.

    The full pivot order, once computed (the sizes' curves at ``k = units``),
    stays in ``module.cache``: a selection on the same statistics (the
    one-pass variant, where the driver hands the sizes' modules to ``select``)
    reuses it instead of factorising again. Propagated selections get new
    modules, with an empty cache. ``ridge`` (default the module's) is the
    correction's relative ridge.

    Query heads of a GQA layer (``module.groups``) are kept in the pivots'
    :func:`~statlab.reference.heads.group_rounds`, so that ``k = m · groups``
    keeps each group's ``m`` best heads; the curve runs along that order.
    """
    ridge = module.ridge if ridge is None else ridge
    if module.kind == "attention":
        order = module.cache.get("order")
        if module.groups:
            if "group order" not in module.cache:
                pivots = module.backend.prune_heads(module.stats, module.W_out, module.unit_size, module.units,
                                                    curve=False, order=order).idx
                module.cache["order"] = pivots
                module.cache["group order"] = torch.as_tensor(group_rounds(pivots.cpu().numpy(), module.groups))
            order = module.cache["group order"]
        r = module.backend.prune_heads(module.stats, module.W_out, module.unit_size, k, ridge=ridge,
                                       curve=curve, order=order)
    else:
        r = module.backend.prune_mlp(module.stats, module.W_out, k, ridge=ridge, curve=curve,
                                     order=module.cache.get("order"))
    if k == module.units and not module.groups:
        module.cache["order"] = r.idx
    residuals = None if r.residuals is None else r.residuals.cpu().numpy()
    return r.idx.tolist(), r.weight, residuals


def centred(module: ModuleStats) -> ModuleStats:
    """``module`` with the statistics of its centred activations ``Z − 1 μᵀ`` (kept in ``module.cache``).

    The ID and the least squares on them fit the correction with an intercept
    (``Stat(intercept=True)``); :func:`intercept_bias` folds it into the bias.
    """
    if "centred" not in module.cache:
        stats = module.backend.centred(module.stats, module.mean, module.rows)
        module.cache["centred"] = dataclasses.replace(module, stats=stats, cache={})
    return module.cache["centred"]


def intercept_bias(module: ModuleStats, kept, w_out: torch.Tensor) -> torch.Tensor:
    """The output bias that goes with ``w_out (out, k · unit_size)`` on the kept units' columns: (out,) fp64.

    ``b' = b + W μ − W' μ_K``: with ``Z ≈ 1 μᵀ + (Z_K − 1 μ_Kᵀ) Tᵀ`` (the ID of the
    centred activations), ``Z Wᵀ + b ≈ Z_K W'ᵀ + b'`` for ``W' = W Tᵀ``. Without
    a correction (``W' = W_K``) it is the dropped columns' mean contribution.
    """
    w_out = w_out.to(torch.float64)
    W = module.W_out.detach().to(w_out)
    mu = torch.as_tensor(module.mean, dtype=torch.float64).to(w_out.device)
    b = torch.zeros(W.shape[0], dtype=torch.float64, device=w_out.device) if module.b_out is None \
        else module.b_out.detach().to(w_out)
    cols = unit_columns(kept, module.unit_size).to(w_out.device)
    return b + W @ mu - w_out @ mu[cols]


WEIGHTINGS = ("depth", "trend")
"""``Stat(weighting=...)``'s named rules (besides True, the model's own, and False, none)."""


def layer_weights(modules: list, adapter, rule: str | None = None) -> np.ndarray:
    """Error weight of every module of ``modules`` (ModuleStats, any order), in that order: (modules,).

    ``rule`` ``"depth"``: STAT's depth weighting
    (:func:`~statlab.reference.budget.post_ln_layer_weights`), the default of
    post-LN encoders. ``"trend"``: each family's largest pivots — the output
    norm of its most important unit, ``max_u ||Z_u W_u^T||`` — over their
    exponential trend (:func:`~statlab.reference.budget.pre_ln_layer_weights`),
    the default of pre-LN decoders. None: the model's default.
    """
    layers = sorted({m.layer for m in modules})
    rule = rule or ("depth" if adapter.norm_position == "post" else "trend")
    if rule not in WEIGHTINGS:
        raise ValueError(f"layer weighting must be one of {WEIGHTINGS}, got {rule!r}")
    if rule == "depth":
        depth = dict(zip(layers, budget_lib.post_ln_layer_weights(len(layers))))
        return np.array([depth[m.layer] for m in modules])
    weights = np.empty(len(modules))
    for kind in ("attention", "mlp"):  # each family over its layers, bottom-up
        at = sorted((i for i, m in enumerate(modules) if m.kind == kind), key=lambda i: modules[i].layer)
        pivots = np.sqrt([unit_energies(modules[i]).max() for i in at])
        weights[at] = budget_lib.pre_ln_layer_weights(pivots)
    return weights


class Stat(PruningMethod):
    """STAT, with switches that turn off one ingredient at a time (the ablations of notebook 05).

    Parameters
    ----------
    correction : bool
        Fold the least-squares correction into ``W_out`` (default). False keeps
        the ID's units with ``W_out`` restricted to them, as the baselines do.
    sizes : {"curves", "uniform"} or mapping of ModuleKey to int
        Sizes from the weighted error curves and one threshold (default), or the
        same kept fraction in every module (:func:`~statlab.reference.budget.uniform_sizes`),
        or given: kept units per module, e.g. another method's allocation
        (:meth:`statlab.plan.PruningPlan.module_sizes`), so that STAT's selection and
        correction can be compared with that method's at the same sizes. Given
        sizes must name every module and keep at most the budget's cost.
    weighting : bool or {"depth", "trend"}
        Weight each module's error curve by its layer with the model's rule
        (True, default: STAT's depth weights on post-LN encoders, the pivots'
        trend on pre-LN decoders), with a named rule of :func:`layer_weights`
        whatever the model (the alternative of the other norm position), or
        weigh all modules alike (False).
    ridge_rule : {"fixed", "gcv"}
        The correction's relative ridge: ``ridge`` in every module (default),
        or chosen per module by generalised cross-validation on its own
        statistics (:func:`statlab.reference.gcv_ridge`; ``ridge`` is then unused).
    dense_target : float in [0, 1]
        What each correction reproduces, on the pruned model's inputs ``Z'``
        (propagated statistics). 0 (default, the paper): the unpruned module's
        output on those inputs, ``Z' Wᵀ``. 1: the dense model's output there,
        ``Z Wᵀ``, which also undoes the error the layers below left. Between: the
        target ``(1 − α) Z' Wᵀ + α Z Wᵀ``. The least squares is
        ``W' = W Tᵀ + α ((G_KK + λ)⁻¹ E_K Wᵀ)ᵀ`` with ``E = Z'ᵀ(Z − Z')``, the
        driver's dense-output moment (:func:`~statlab.methods.base.refit_output_map`;
        computed in torch on either backend's Gram). The kept units are the ID's
        either way; on the one-pass variant ``Z' = Z`` and the option changes nothing.
    split : None, "proportional" or float in [0, 1]
        How the budget divides between the families. None (default, the paper):
        one threshold over the weighted curves of heads and neurons together.
        A number: that share of the removed cost comes from attention, each
        family sized by its own threshold
        (:func:`~statlab.reference.budget.split_sizes`); ``"proportional"``:
        each family keeps the budget's fraction of its own cost. Only with
        ``sizes="curves"``.
    attention_units : {"groups", "heads"}
        A GQA model's attention units: whole KV groups (default, the paper's
        choice for GQA) or query heads within their groups (``"heads"``;
        DESIGN §1.3). With heads, every layer keeps the same number ``m`` of
        query heads in each group (its ``num_key_value_groups`` becomes ``m``)
        and the key and value maps whole: the ID ranks the heads, the kept
        ones are each group's ``m`` best (:func:`prune_module`), and each
        curve holds its error from one multiple of the groups to the next
        (:func:`~statlab.reference.budget.stepped_curve`), so the threshold
        gives allowed sizes; the key and value maps are a layer's fixed cost
        (:class:`~statlab.reference.budget.ModuleCost`). Models without GQA
        are the same either way. Not with ``sizes="uniform"``.
    intercept : bool
        Fit each correction with an intercept: the error curves, the ID and the
        least squares on the centred activations :func:`centred`, and the
        dropped units' mean contribution folded into the output map's bias
        (:func:`intercept_bias`; a map without a bias gets one, recorded in the
        plan). Not with ``dense_target``.
    keep_modules : bool
        No module is removed whole: the threshold's sizes are raised to at
        least one unit per module (one query head per group with
        ``attention_units="heads"``), so no layer loses its whole attention or
        MLP (:func:`~statlab.reference.budget.choose_sizes`' ``minimum``).
        Default False (the paper: a module whose weighted curve lies under the
        threshold goes). Only with the one threshold (``split=None``,
        ``sizes="curves"``).
    order : {"joint", "neurons first"}
        When each family is pruned. ``"joint"`` (default): heads and neurons
        in one bottom-up pass, both sized by one threshold on the dense model's
        curves. ``"neurons first"`` (the authors' order): the threshold over
        both families sets the MLP sizes and every MLP is pruned (bottom-up,
        corrected); then the heads are measured again on that corrected model,
        their curves drawn anew and sized by a threshold of their own on what
        the MLPs left of the budget, and pruned in a second bottom-up pass
        (:attr:`~statlab.methods.PruningMethod.phases`). Only with
        ``sizes="curves"``; not with ``dense_target`` (whose dense model would
        be the half-pruned one in the second pass).
    """

    name = "stat"
    sizes_read_data = True  # the error curves of the dense pass
    propagates = True

    def __init__(self, *, seed=0, ridge=0.0, correction=True, sizes="curves", weighting=True, ridge_rule="fixed",
                 dense_target=0.0, intercept=False, split=None, attention_units="groups", order="joint",
                 keep_modules=False):
        super().__init__(seed=seed, ridge=ridge)
        if not isinstance(keep_modules, bool):
            raise ValueError(f"keep_modules must be True or False, got {keep_modules!r}")
        self.keep_modules = keep_modules
        if keep_modules and (sizes != "curves" or split is not None):
            raise ValueError("keep_modules raises the one threshold's sizes: it needs sizes='curves' and split=None")
        if order not in ORDERS:
            raise ValueError(f"order must be one of {tuple(ORDERS)}, got {order!r}")
        self.order, self.phases = order, ORDERS[order]
        if order != "joint" and (sizes != "curves" or dense_target):
            raise ValueError(f"order={order!r} sizes the second family from curves measured anew: it needs "
                             "sizes='curves' and dense_target=0")
        self.attention_units = check_attention_units(attention_units)
        if self.attention_units == "heads" and sizes == "uniform":
            raise ValueError("uniform sizes keep a fraction of every module, which a GQA layer's query heads "
                             "cannot follow (multiples of its groups): use sizes='curves' with attention_units='heads'")
        if split is not None and split != "proportional" and (
                isinstance(split, bool) or not isinstance(split, (int, float)) or not 0.0 <= float(split) <= 1.0):
            raise ValueError(f"split must be None, 'proportional' or a share in [0, 1], got {split!r}")
        self.split = split if split in (None, "proportional") else float(split)
        self.intercept = bool(intercept)
        if isinstance(dense_target, bool) or not isinstance(dense_target, (int, float)) \
                or not 0.0 <= float(dense_target) <= 1.0:
            raise ValueError(f"dense_target must be a number in [0, 1], got {dense_target!r}")
        self.dense_target = float(dense_target)
        if self.dense_target and not correction:
            raise ValueError("dense_target weights the correction's target: it needs correction=True")
        if self.dense_target and self.intercept:
            raise ValueError("dense_target and intercept are two targets for one correction: choose one")
        if self.dense_target:  # the dense model's activations beside the pruned ones (statlab.capture.DenseStream)
            self.needs = self.needs | {"dense_outputs"}
        self.given = None
        if isinstance(sizes, Mapping):
            self.given = {ModuleKey(*key): check_int(f"size of {key}", size, minimum=0) for key, size in sizes.items()}
            self.sizes_read_data = False  # no dense pass: nothing to read off it
            sizes = "given"
        elif sizes not in ("curves", "uniform"):
            raise ValueError(f"sizes must be 'curves', 'uniform' or a mapping of ModuleKey to kept units, "
                             f"got {sizes!r}")
        if ridge_rule not in ("fixed", "gcv"):
            raise ValueError(f"ridge_rule must be 'fixed' or 'gcv', got {ridge_rule!r}")
        if not isinstance(weighting, bool) and weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be True, False or one of {WEIGHTINGS}, got {weighting!r}")
        self.correction, self.size_rule, self.weighting = bool(correction), sizes, weighting
        if self.split is not None and sizes != "curves":
            raise ValueError(f"split divides the budget between the curves of the two families: it needs "
                             f"sizes='curves', not {sizes!r}")
        self.ridge_rule = ridge_rule
        off = [word for word, on in (("no correction", self.correction), ("uniform sizes", sizes != "uniform"),
                                     ("given sizes", sizes != "given"), ("no layer weights", self.weighting))
               if not on]
        off += [f"{weighting} weights"] if weighting in WEIGHTINGS else []
        off += ["gcv ridge"] if ridge_rule == "gcv" else []
        off += [f"split {self.split:g}" if isinstance(self.split, float) else "split proportional"] \
            if self.split is not None else []
        off += [f"dense target {self.dense_target:g}"] if self.dense_target else []
        off += ["intercept"] if self.intercept else []
        off += ["query heads"] if self.attention_units == "heads" else []
        off += [order] if order != "joint" else []
        off += ["modules kept"] if keep_modules else []
        self.label = "stat" + (f" ({', '.join(off)})" if off else "")

    def sizes(self, modules, costs, fraction, adapter):
        if self.given is not None:
            return self._given_sizes(costs, fraction)
        keys, stats = list(modules), list(modules.values())
        stats = [centred(m) for m in stats] if self.intercept else stats
        cost_list = [costs[k] for k in keys]
        curves = [prune_module(m, m.units, curve=True)[2] for m in stats]
        curves = [budget_lib.stepped_curve(c, m.groups) if m.groups else c for c, m in zip(curves, stats)]
        if self.size_rule == "uniform":
            sizes, info = budget_lib.uniform_sizes(cost_list, fraction), {"sizes": "uniform"}
        else:
            weights = np.ones(len(stats)) if self.weighting is False else \
                layer_weights(stats, adapter, None if self.weighting is True else self.weighting)
            if self.split is None:
                minimum = [max(m.groups, 1) for m in stats] if self.keep_modules else None
                sizes, tau = budget_lib.choose_sizes(curves, cost_list, weights, fraction, minimum=minimum)
                info = {"threshold": tau}
            else:
                sizes, taus = budget_lib.split_sizes(curves, cost_list, weights, [k.kind for k in keys], fraction,
                                                     self.split)
                info = {"thresholds": taus, "split": self.split}
        return SizeChoice(dict(zip(keys, sizes)), dict(zip(keys, curves)), info)

    def _given_sizes(self, costs, fraction):
        """The given sizes, checked against the modules and the budget."""
        problems = [f"no module {k}" for k in self.given if k not in costs]
        problems += [f"{k} is not given" for k in costs if k not in self.given]
        problems += [f"{k}: {self.given[k]} of {c.units} units" for k, c in costs.items()
                     if self.given.get(k, 0) > c.units]
        if problems:
            raise ValueError(f"given sizes do not fit this model: {'; '.join(problems[:4])}")
        kept = budget_lib.total_cost([self.given[k] for k in costs], list(costs.values()))
        dense = budget_lib.total_cost([c.units for c in costs.values()], list(costs.values()))
        if kept > fraction * dense * (1 + 1e-9):
            raise ValueError(f"given sizes keep {kept / dense:.4f} of the cost, above the budget's {fraction:.4f}")
        return SizeChoice(dict(self.given), None, {"sizes": "given"})

    def select(self, module, k):
        ridge = None  # the module's
        source = centred(module) if self.intercept else module  # what the ID and the least squares see
        if self.correction and self.ridge_rule == "gcv" and 0 < k < module.units:
            order, _, _ = prune_module(source, module.units)  # the pivots once (kept in source.cache)
            cols = unit_columns(order[:k], module.unit_size)
            ridge = module.backend.gcv_ridge(source.stats, module.W_out, cols, module.rows)
        kept, weight, _ = prune_module(source, k) if ridge is None else prune_module(source, k, ridge=ridge)
        if not self.correction:
            weight = restricted_w_out(module, kept)
        if self.intercept:
            return Selection(kept, weight, b_out=intercept_bias(module, kept, weight))
        if not self.correction:
            return Selection(kept, weight)
        if self.dense_target and module.output_error is not None and 0 < k:
            G = module.gram()  # (n, n) fp64, a torch Gram under either backend
            error = self.dense_target * module.output_error.to(G.device)  # α Z'ᵀ(Z − Z')
            weight = refit_output_map(module.W_out, G, unit_columns(kept, module.unit_size).to(G.device), error,
                                      ridge=module.ridge if ridge is None else ridge)
        return Selection(kept, weight)
