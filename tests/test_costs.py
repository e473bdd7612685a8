"""The analytic cost model against torch's FLOP counter, and the threshold search."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import statlab
from statlab.costs import block_macs
from statlab.reference import budget

from .test_prune import batches, tiny_bert, tiny_distilbert


def measured_macs(model, seq_len):
    model.set_attn_implementation("eager")  # the fused CPU attention kernel is not counted
    ids = torch.randint(1, 100, (1, seq_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=ids)
    return counter.get_total_flops() / 2


@pytest.mark.parametrize("make", [tiny_bert, tiny_distilbert])
@pytest.mark.parametrize("mac_fraction", [1.0, 0.6, 0.3, 0.01])
def test_analytic_macs_match_flop_counter(make, mac_fraction):
    model = make()
    if mac_fraction < 1:
        method = "magnitude" if mac_fraction < 0.05 else "stat"  # 0.01 removes every module
        statlab.prune(model, batches(), mac_fraction=mac_fraction, method=method, base="tiny")
    for seq_len in (7, 20):
        assert block_macs(model, seq_len) == pytest.approx(measured_macs(model, seq_len), rel=0.01)


def test_unit_costs():
    # one BERT-base head at s = 128: 4·s·d·d_h + 2·s²·d_h
    assert budget.head_macs(128, 768, 64) == 4 * 128 * 768 * 64 + 2 * 128**2 * 64
    assert budget.neuron_macs(128, 768) == 2 * 128 * 768
    assert budget.neuron_macs(128, 768, gated=True) == 3 * 128 * 768
    # a GQA group of 3 query heads and one K/V head
    assert budget.head_params(576, 64, 3, 1, bias=False) == (3 + 2) * 64 * 576 + 3 * 64 * 576


def test_post_ln_weights_decrease_with_depth():
    w = budget.post_ln_layer_weights(6)
    assert w[0] == pytest.approx(np.sqrt(6) + 1) and w[-1] == pytest.approx(2.0)
    assert np.all(np.diff(w) < 0)


def test_choose_sizes_meets_the_budget_and_prefers_cheap_errors():
    easy = np.linspace(1, 0, 11) ** 4  # little error until few units are left
    hard = np.linspace(1, 0, 11)  # error grows as soon as units go
    costs = [budget.ModuleCost(10, 1.0), budget.ModuleCost(10, 1.0)]
    sizes, tau = budget.choose_sizes([easy, hard], costs, np.ones(2), 0.5)
    assert budget.total_cost(sizes, costs) <= 10
    assert sizes[0] < sizes[1]
    assert budget.choose_sizes([easy, hard], costs, np.ones(2), 1.0)[0] == [10, 10]


@pytest.mark.parametrize("fraction", [0.0, 1.2, -0.1])
def test_choose_sizes_rejects_bad_budgets(fraction):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        budget.choose_sizes([np.array([1.0, 0.0])], [budget.ModuleCost(1, 1.0)], [1.0], fraction)


def greedy_leftover(sizes, exact, costs, left):
    """The greedy spend_leftover describes, computed directly: rescan, give the fitting module of smallest remainder."""
    sizes, given = list(sizes), set()
    while True:
        fits = [i for i in range(len(sizes)) if i not in given and sizes[i] < costs[i].units
                and costs[i].per_unit <= left + 1e-9]
        if not fits:
            return sizes
        i = min(fits, key=lambda i: (sizes[i] - exact[i], i))
        sizes[i], left = sizes[i] + 1, left - costs[i].per_unit
        given.add(i)


def test_spend_leftover_is_the_direct_greedy_on_small_inputs():
    rng = np.random.default_rng(0)
    for _ in range(500):
        m = int(rng.integers(1, 6))
        costs = [budget.ModuleCost(int(rng.integers(0, 6)), float(rng.integers(1, 5))) for _ in range(m)]
        exact = [rng.uniform(0, c.units) for c in costs]
        rounder = np.floor if rng.random() < 0.5 else np.round
        sizes = [int(rounder(x)) for x in exact]
        left = float(rng.integers(0, 12))
        got = budget.spend_leftover(sizes, exact, costs, left)
        assert got == greedy_leftover(sizes, exact, costs, left)
        assert all(0 <= g - k <= 1 and g <= c.units for g, k, c in zip(got, sizes, costs))
        assert budget.total_cost(got, costs) <= budget.total_cost(sizes, costs) + left + 1e-9


def test_spend_leftover_gives_the_most_rounded_down_first():
    costs = [budget.ModuleCost(4, 2.0), budget.ModuleCost(4, 2.0), budget.ModuleCost(4, 1.0)]
    # remainders -0.2, -0.9, -0.5: module 1 first, then 2; module 0's unit no longer fits
    assert budget.spend_leftover([2, 2, 2], [2.2, 2.9, 2.5], costs, 3.0) == [2, 3, 3]
    with pytest.raises(ValueError, match="one entry per module"):
        budget.spend_leftover([1, 2], [1.0], costs[:2], 1.0)


def test_uniform_sizes_spend_the_budget():
    costs = [budget.ModuleCost(12, 7.0), budget.ModuleCost(1536, 0.1)] * 3
    sizes = budget.uniform_sizes(costs, 0.4)
    dense = budget.total_cost([c.units for c in costs], costs)
    spent = budget.total_cost(sizes, costs)
    assert spent <= 0.4 * dense + 1e-9
    assert spent >= 0.4 * dense - 7.0  # less than one head left over
    assert [sizes[0], sizes[2], sizes[4]].count(5) >= 1  # some layers round 4.8 heads up


def _family_case(seed=0):
    """Curves (non-increasing, ending at 0), costs and weights of 3 attention and 3 MLP modules."""
    rng = np.random.default_rng(seed)
    costs, curves, families = [], [], []
    for layer in range(3):
        for family, units, per_unit in (("attention", 4, 40.0), ("mlp", 24, 3.0)):
            drops = rng.random(units)
            curve = np.concatenate([[1.0], 1.0 - np.cumsum(drops) / drops.sum()])
            curve[-1] = 0.0
            costs.append(budget.ModuleCost(units, per_unit))
            curves.append(np.maximum(curve, 0.0))
            families.append(family)
    return curves, costs, rng.uniform(0.5, 2.0, len(costs)), families


@pytest.mark.parametrize("share", [0.0, 0.25, 0.5, "proportional", 1.0])
@pytest.mark.parametrize("fraction", [0.8, 0.5, 0.3])
def test_split_sizes_take_the_share_from_attention_and_the_rest_from_the_mlps(share, fraction):
    curves, costs, weights, families = _family_case()
    sizes, taus = budget.split_sizes(curves, costs, weights, families, fraction, share)
    att = [i for i, f in enumerate(families) if f == "attention"]
    mlp = [i for i, f in enumerate(families) if f == "mlp"]

    def cost(at, ks=None):
        return sum((sizes[i] if ks is None else ks[i]) * costs[i].per_unit for i in at)

    A, M = cost(att, [c.units for c in costs]), cost(mlp, [c.units for c in costs])
    D = A + M
    s = A / D if share == "proportional" else share
    target_a = min(max(A - s * (1 - fraction) * D, 0.0), A, fraction * D)
    # attention: exactly choose_sizes on its own modules at its own fraction (direct computation)
    if target_a == 0:
        assert [sizes[i] for i in att] == [0] * len(att)
    else:
        expected, _ = budget.choose_sizes([curves[i] for i in att], [costs[i] for i in att],
                                          [weights[i] for i in att], target_a / A)
        assert [sizes[i] for i in att] == expected
    assert cost(att) <= target_a + 1e-9 and cost(att) > target_a - max(costs[i].per_unit for i in att) * len(att)
    left = fraction * D - cost(att)  # what the MLPs may keep
    assert cost(mlp) <= left + 1e-9 and cost(att) + cost(mlp) <= fraction * D + 1e-9
    if left < M:
        expected, _ = budget.choose_sizes([curves[i] for i in mlp], [costs[i] for i in mlp],
                                          [weights[i] for i in mlp], left / M)
        assert [sizes[i] for i in mlp] == expected
    assert set(taus) == {"attention", "mlp"}


def test_split_sizes_refuse_bad_shares_and_families():
    curves, costs, weights, families = _family_case()
    for share in (-0.1, 1.5, "half", True):
        with pytest.raises(ValueError, match="share"):
            budget.split_sizes(curves, costs, weights, families, 0.5, share)
    with pytest.raises(ValueError, match="families"):
        budget.split_sizes(curves, costs, weights, ["attention"] * 5 + ["conv"], 0.5, 0.5)
