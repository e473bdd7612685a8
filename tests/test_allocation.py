"""STAT's allocation options: the authors' order and modules kept (issue 17 item 4).

``Stat(order="neurons first")`` on tiny Llama decoders: the budget met, the
second phase's fraction against a direct computation, the heads' statistics
taken on the MLP-pruned model (the two phases rebuilt by hand from given sizes
give the same model), query heads within groups, plans that reload bit for bit,
and the option's errors. ``Stat(keep_modules=True)``: the threshold's sizes
raised to one level per module, against a direct computation.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import statlab
from statlab.driver import _remaining_fraction
from statlab.methods import Stat
from statlab.reference import budget

from .test_llama import logits, rel_error, windows
from .test_query_heads import tiny_llama


def kept_fraction(plan):
    return plan.meta["kept_cost"] / plan.meta["dense_cost"]


@pytest.mark.parametrize("budget_kind", ["sparsity", "mac_fraction"])
def test_budget_met_and_phases_recorded(budget_kind):
    model = tiny_llama(kv_heads=2, heads=6, layers=4)
    target = {"sparsity": 0.3, "mac_fraction": 0.6}[budget_kind]
    plan = statlab.prune(model, windows(), method=Stat(order="neurons first"), base="tiny", **{budget_kind: target})
    allowed = 1 - target if budget_kind == "sparsity" else target
    assert kept_fraction(plan) <= allowed * (1 + 1e-9)
    assert kept_fraction(plan) > allowed - 0.1  # the second phase spends what the first left
    first, second = plan.meta["phases"]
    assert (first["kinds"], second["kinds"]) == (["mlp"], ["attention"])
    assert first["fraction"] == allowed and 0 < second["fraction"] <= 1
    assert plan.meta["method"] == "stat (neurons first)"
    for layer in plan.layers:  # each family's curve is the one its sizes came from
        assert len(layer["attn_residuals"]) == layer["attn_units"] + 1
        assert len(layer["mlp_residuals"]) == layer["mlp_units"] + 1


def test_remaining_fraction_against_a_direct_computation():
    costs = {"a": budget.ModuleCost(4, 3.0), "b": budget.ModuleCost(10, 1.0), "c": budget.ModuleCost(6, 2.0, 5.0)}
    dense = 4 * 3.0 + 10 * 1.0 + (6 * 2.0 + 5.0)  # 39
    # b keeps 4 of 10 at 0.5 of the whole budget: a and c share 0.5 * 39 - 4 of their dense 29
    assert _remaining_fraction(0.5, {"b": 4}, costs, ["a", "c"]) == pytest.approx((0.5 * dense - 4.0) / 29.0)
    assert _remaining_fraction(0.99, {"b": 0}, costs, ["a", "c"]) == 1.0  # clipped
    assert _remaining_fraction(0.1, {"b": 10}, costs, ["a", "c"]) == 0.0


@pytest.mark.parametrize("units", ["groups", "heads"])
def test_two_phases_are_the_two_prunes_done_by_hand(units):
    """The plan's model equals pruning the MLPs at its sizes, then the attention at its sizes on that model."""
    dense = tiny_llama(kv_heads=2, heads=6, layers=3)
    calibration = windows()
    model = copy.deepcopy(dense)
    plan = statlab.prune(model, calibration, sparsity=0.3, method=Stat(order="neurons first", attention_units=units),
                         base="tiny")
    assert any(len(l["attn_kept"]) < l["attn_units"] for l in plan.layers)  # the second phase pruned something
    by_hand = copy.deepcopy(dense)
    # first the MLPs at the plan's sizes, attention whole; then the attention, the (pruned) MLPs whole:
    # a module kept whole gets the identity correction (k = units)
    for attention in (False, True):
        sizes = {}
        for l in plan.layers:
            sizes[l["index"], "attention"] = len(l["attn_kept"]) if attention else l["attn_units"]
            sizes[l["index"], "mlp"] = len(l["mlp_kept"])
        if attention:  # the heads' curves were drawn on the MLP-pruned model, not the dense one
            remeasured = statlab.prune(copy.deepcopy(by_hand), calibration, mac_fraction=1.0,
                                       method=Stat(attention_units=units), base="tiny")
            for mine, theirs in zip(plan.layers, remeasured.layers):
                np.testing.assert_allclose(mine["attn_residuals"], theirs["attn_residuals"], rtol=1e-6, atol=1e-9)
        statlab.prune(by_hand, calibration, mac_fraction=1.0, method=Stat(sizes=sizes, attention_units=units),
                      base="tiny")
    ids = windows(1, seed=9)[0]["input_ids"]
    assert rel_error(logits(by_hand, ids), logits(model, ids)) < 1e-5
    joint = statlab.prune(copy.deepcopy(dense), calibration, sparsity=0.3, method=Stat(attention_units=units),
                          base="tiny")
    assert any(not np.allclose(a["attn_residuals"], b["attn_residuals"]) for a, b in zip(plan.layers, joint.layers))


def test_reload_is_bit_identical(tmp_path):
    dense = tiny_llama(kv_heads=2, heads=6, tied=True, layers=4)
    model = copy.deepcopy(dense)
    plan = statlab.prune(model, windows(), sparsity=0.3, method=Stat(order="neurons first", ridge=0.01), base="tiny")
    plan.save(tmp_path / "plan")
    reloaded = statlab.PruningPlan.load(tmp_path / "plan").apply(copy.deepcopy(dense))
    ids = windows(1, seed=11)[0]["input_ids"]
    assert torch.equal(logits(reloaded, ids), logits(model, ids))


def test_one_pass_and_reference_backend():
    dense = tiny_llama(kv_heads=2, heads=6)
    ids = windows(1, seed=7)[0]["input_ids"]
    errors = {}
    for backend, propagate in (("fast", True), ("reference", True), ("fast", False)):
        model = copy.deepcopy(dense)
        plan = statlab.prune(model, windows(), sparsity=0.3, backend=backend, propagate=propagate,
                             method=Stat(order="neurons first"), base="tiny")
        assert kept_fraction(plan) <= 0.7 * (1 + 1e-9)
        errors[backend, propagate] = rel_error(logits(model, ids), logits(dense, ids))
    assert abs(errors["fast", True] - errors["reference", True]) <= 0.1 * errors["reference", True] + 1e-4
    assert 0 < errors["fast", False] < 1


def test_bad_orders_are_refused():
    with pytest.raises(ValueError, match="order must be one of"):
        Stat(order="heads first")
    with pytest.raises(ValueError, match="sizes='curves'"):
        Stat(order="neurons first", sizes="uniform")
    with pytest.raises(ValueError, match="dense_target"):
        Stat(order="neurons first", dense_target=0.5)


def test_cli_names_the_orders_the_method_knows():
    from statlab import cli
    from statlab.methods.stat import ORDERS

    assert cli.ORDERS == tuple(ORDERS)


def test_choose_sizes_with_a_minimum_against_a_direct_computation():
    curves = [np.array([1.0, 0.2, 0.1, 0.0]), np.array([1.0, 0.9, 0.5, 0.0]), np.array([1.0, 0.0])]
    costs = [budget.ModuleCost(3, 1.0), budget.ModuleCost(3, 1.0), budget.ModuleCost(1, 2.0)]
    weights = [1.0, 0.1, 0.9]  # dense cost 8, budget 4
    # no minimum: from τ = 0.1 module 0 keeps 2 (0.1 <= τ), module 1 none (0.1 <= τ), module 2 one: cost 4;
    # just below, module 0 needs 3 and module 1 one: cost 6
    sizes, tau = budget.choose_sizes(curves, costs, weights, 0.5)
    assert sizes == [2, 0, 1] and tau == pytest.approx(0.1, abs=1e-9)
    # one unit each at least: at τ in [0.1, 0.2) that is 2 + 1 + 2 = 5; from τ = 0.2 module 0 keeps one: 4
    sizes, tau = budget.choose_sizes(curves, costs, weights, 0.5, minimum=[1, 1, 1])
    assert sizes == [1, 1, 1] and tau == pytest.approx(0.2, abs=1e-9)
    with pytest.raises(ValueError, match="minimum of every module"):
        budget.choose_sizes(curves, costs, weights, 0.3, minimum=[1, 1, 1])


@pytest.mark.parametrize("units", ["groups", "heads"])
def test_keep_modules_keeps_one_level_of_every_module(units):
    from statlab.methods.stat import layer_weights

    dense = tiny_llama(kv_heads=2, heads=6, layers=4, tied=True)
    captured = {}

    class Spy(Stat):  # the layer weights the threshold used
        def sizes(self, modules, costs, fraction, adapter):
            captured["w"] = layer_weights(list(modules.values()), adapter)
            return super().sizes(modules, costs, fraction, adapter)

    model = copy.deepcopy(dense)
    plan = statlab.prune(model, windows(), sparsity=0.75, method=Spy(keep_modules=True, attention_units=units),
                         base="tiny")
    assert "modules kept" in plan.meta["method"] and kept_fraction(plan) <= 0.25 * (1 + 1e-9)
    level = 2 if units == "heads" else 1  # one query head in each of the 2 groups, or one group
    sizes = [n for l in plan.layers for n in (len(l["attn_kept"]), len(l["mlp_kept"]))]
    assert all(k >= m for k, m in zip(sizes, [level, 1] * len(plan.layers)))
    # the sizes are the threshold's, raised to the minimum
    curves = [np.asarray(c) for l in plan.layers for c in (l["attn_residuals"], l["mlp_residuals"])]
    thresholded = budget.sizes_for_threshold(curves, captured["w"], plan.meta["threshold"])
    assert sizes == [max(k, m) for k, m in zip(thresholded, [level, 1] * len(plan.layers))]
    plain = statlab.prune(copy.deepcopy(dense), windows(), sparsity=0.75, base="tiny",
                          method=Stat(attention_units=units))
    assert any(len(l["attn_kept"]) == 0 or len(l["mlp_kept"]) == 0 for l in plain.layers)  # the minimum was needed
    reloaded = plan.apply(copy.deepcopy(dense))
    ids = windows(1, seed=3)[0]["input_ids"]
    assert torch.equal(logits(reloaded, ids), logits(model, ids))


def test_keep_modules_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="split=None"):
        Stat(keep_modules=True, split=0.2)
    with pytest.raises(ValueError, match="keep_modules must be"):
        Stat(keep_modules=1)
    with pytest.raises(ValueError, match="minimum of every module"):
        statlab.prune(tiny_llama(), windows(), mac_fraction=0.001, method=Stat(keep_modules=True), base="tiny")
