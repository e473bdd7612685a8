"""STAT with one ingredient switched off (notebook 05's ablations): each switch does what it says, and only that."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import statlab
from statlab.costs import module_costs
from statlab.methods import Stat
from statlab.models import get_adapter
from statlab.reference import budget as budget_lib

from .test_llama import tiny_llama, windows
from .test_prune import batches, tiny_bert

FAMILIES = {"bert": (tiny_bert, batches), "llama-gqa": (tiny_llama, windows)}


def run(family, method, *, propagate=True, fraction=0.5):
    """``(dense, pruned, plan)`` of one seeded run on a tiny model."""
    make, data = FAMILIES[family]
    dense = make()
    model = copy.deepcopy(dense)
    plan = statlab.prune(model, data(4), mac_fraction=fraction, method=method, base="tiny", propagate=propagate)
    return dense, model, plan


def sizes_of(plan):
    return [n for layer in plan.layers for n in (len(layer["attn_kept"]), len(layer["mlp_kept"]))]


def costs_of(family, plan):
    make, _ = FAMILIES[family]
    dense = make()
    adapter = get_adapter(dense)
    pairs = module_costs(dense, adapter, adapter.blocks(dense), "macs", plan.meta["seq_len"])
    return [c for pair in pairs for c in pair]


def held_out_error(family, dense, model):
    _, data = FAMILIES[family]
    batch = data(1, seed=99)[0]
    with torch.no_grad():
        if family == "bert":
            mask = batch["attention_mask"].bool()
            a = model(**batch).last_hidden_state[mask]
            b = dense(**batch).last_hidden_state[mask]
        else:
            a = model(input_ids=batch["input_ids"], use_cache=False).logits
            b = dense(input_ids=batch["input_ids"], use_cache=False).logits
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("family", FAMILIES)
def test_default_instance_is_the_named_method(family):
    _, _, by_name = run(family, "stat")
    _, _, by_instance = run(family, Stat())
    assert by_instance.meta["method"] == "stat"
    assert [l["attn_kept"] for l in by_instance.layers] == [l["attn_kept"] for l in by_name.layers]
    assert [l["mlp_kept"] for l in by_instance.layers] == [l["mlp_kept"] for l in by_name.layers]
    for name, tensor in by_name.tensors.items():
        torch.testing.assert_close(by_instance.tensors[name], tensor, rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_no_correction_keeps_the_same_units_and_restricts_w_out(family):
    # one pass: the statistics do not depend on the layers below, so the kept sets must agree exactly
    dense, corrected, with_corr = run(family, Stat(), propagate=False)
    _, plain, without = run(family, Stat(correction=False), propagate=False)
    assert without.meta["method"] == "stat (no correction)"
    assert sizes_of(without) == sizes_of(with_corr)
    assert [l["mlp_kept"] for l in without.layers] == [l["mlp_kept"] for l in with_corr.layers]
    adapter = get_adapter(dense)
    for block in adapter.blocks(dense):
        kept = without.layers[block.index]["mlp_kept"]
        W = dense.get_submodule(block.mlp_out).weight
        torch.testing.assert_close(plain.get_submodule(block.mlp_out).weight, W[:, kept])
    # the correction is what keeps the output: without it the held-out error is larger
    assert held_out_error(family, dense, corrected) < held_out_error(family, dense, plain)


@pytest.mark.parametrize("family", FAMILIES)
def test_uniform_sizes_are_the_baselines_sizes(family):
    _, _, plan = run(family, Stat(sizes="uniform"))
    assert plan.meta["method"] == "stat (uniform sizes)"
    costs = costs_of(family, plan)
    assert sizes_of(plan) == budget_lib.uniform_sizes(costs, 0.5)


@pytest.mark.parametrize("family", FAMILIES)
def test_no_layer_weights_is_one_threshold_on_the_raw_curves(family):
    _, _, plan = run(family, Stat(weighting=False))
    assert plan.meta["method"] == "stat (no layer weights)"
    curves = [np.asarray(c) for l in plan.layers for c in (l["attn_residuals"], l["mlp_residuals"])]
    costs = costs_of(family, plan)
    expected, tau = budget_lib.choose_sizes(curves, costs, np.ones(len(curves)), 0.5)
    assert sizes_of(plan) == expected
    assert plan.meta["threshold"] == pytest.approx(tau)


def test_bad_size_rule_is_a_clear_error():
    with pytest.raises(ValueError, match="sizes must be"):
        Stat(sizes="equal")


@pytest.mark.parametrize("family", FAMILIES)
def test_given_sizes_are_another_plans_allocation_with_stats_selection(family):
    """STAT at another method's sizes: those sizes exactly, STAT's own kept units for them, its correction."""
    _, _, peer = run(family, "activation")
    sizes = peer.module_sizes()
    assert list(sizes.values()) == sizes_of(peer)
    dense, model, plan = run(family, Stat(sizes=sizes))
    assert plan.meta["method"] == "stat (given sizes)" and plan.meta["sizes"] == "given"
    assert sizes_of(plan) == sizes_of(peer)
    assert plan.meta["kept_cost"] <= 0.5 * plan.meta["dense_cost"] * (1 + 1e-9)
    _, plain, _ = run(family, Stat(sizes=sizes, correction=False))
    assert held_out_error(family, dense, model) < held_out_error(family, dense, plain)
    # kept units differ from the peer's somewhere: STAT chose them, not the peer
    assert any(a["mlp_kept"] != b["mlp_kept"] for a, b in zip(plan.layers, peer.layers))


def test_given_sizes_are_checked_against_the_model_and_the_budget():
    _, _, peer = run("bert", "activation")
    sizes = peer.module_sizes()
    first = next(iter(sizes))
    with pytest.raises(ValueError, match="above the budget"):
        run("bert", Stat(sizes=sizes), fraction=0.4)
    with pytest.raises(ValueError, match="is not given"):
        run("bert", Stat(sizes={k: v for k, v in sizes.items() if k != first}))
    with pytest.raises(ValueError, match="units"):
        run("bert", Stat(sizes={**sizes, first: 10_000}))
    with pytest.raises(ValueError, match="size of"):
        Stat(sizes={first: -1})


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("split", ["proportional", 0.0, 0.6])
def test_split_sizes_each_family_by_its_own_threshold(family, split):
    dense, model, plan = run(family, Stat(split=split))
    label = "split proportional" if split == "proportional" else f"split {split:g}"
    assert plan.meta["method"] == f"stat ({label})" and plan.meta["split"] == split
    curves = [np.asarray(c) for l in plan.layers for c in (l["attn_residuals"], l["mlp_residuals"])]
    costs = costs_of(family, plan)
    families = ["attention", "mlp"] * len(plan.layers)
    # the same weights the default threshold uses: recovered from a default run's plan
    _, _, default = run(family, Stat())
    expected, _ = budget_lib.split_sizes(curves, costs, _weights(family), families, 0.5, split)
    assert sizes_of(plan) == expected
    assert plan.meta["kept_cost"] <= 0.5 * plan.meta["dense_cost"] * (1 + 1e-9)
    assert held_out_error(family, dense, model) < 1.0
    assert sizes_of(default) != sizes_of(plan) or split == "proportional"


@pytest.mark.parametrize("family", FAMILIES)
def test_the_other_norm_positions_weighting(family):
    """``weighting="depth"`` on the decoder (STAT's post-LN weights) and ``"trend"`` on the encoder (the pivots')."""
    rule = "trend" if family == "bert" else "depth"
    dense, model, plan = run(family, Stat(weighting=rule))
    assert plan.meta["method"] == f"stat ({rule} weights)"
    curves = [np.asarray(c) for l in plan.layers for c in (l["attn_residuals"], l["mlp_residuals"])]
    L = len(plan.layers)
    if rule == "depth":  # sqrt(L + 1 - l) + 1 for l = 1..L, the same for a layer's two modules
        weights = np.repeat([np.sqrt(L + 1 - l) + 1 for l in range(1, L + 1)], 2)
    else:
        weights = _weights(family, rule)
        assert not np.allclose(weights, np.repeat(budget_lib.post_ln_layer_weights(L), 2))
    expected, _ = budget_lib.choose_sizes(curves, costs_of(family, plan), weights, 0.5)
    assert sizes_of(plan) == expected
    assert held_out_error(family, dense, model) < 1.0
    with pytest.raises(ValueError, match="weighting must be"):
        Stat(weighting="uniform")


def _weights(family, rule=None):
    """The layer weights STAT's sizes use on the tiny model (``layer_weights`` on its dense modules)."""
    from statlab.methods.stat import layer_weights

    make, data = FAMILIES[family]
    dense = make()
    adapter = get_adapter(dense)
    captured = {}

    class Spy(Stat):
        def sizes(self, modules, costs, fraction, adapter):
            captured["w"] = layer_weights(list(modules.values()), adapter, rule)
            return super().sizes(modules, costs, fraction, adapter)

    statlab.prune(copy.deepcopy(dense), data(4), mac_fraction=0.5, method=Spy(), base="tiny")
    return captured["w"]


def test_bad_split_is_a_clear_error():
    for split in (-0.5, 2, "half", True):
        with pytest.raises(ValueError, match="split must be"):
            Stat(split=split)
    with pytest.raises(ValueError, match="needs sizes='curves'"):
        Stat(split=0.5, sizes="uniform")
