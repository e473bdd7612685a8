"""Query heads within GQA groups as STAT's attention units (``Stat(attention_units="heads")``).

Tiny Llama decoders with 6 query heads in 2 or 3 KV groups: the heads view of
the blocks, the cost model with the key and value maps as a fixed cost (against
torch's FLOP counter and the parameter count), the grouped order, budgets met,
equal query heads per group, plans that reload bit for bit (and restore
``num_key_value_groups``), and the reference backend beside the fast one.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import transformers

import statlab
from statlab.costs import block_macs, module_costs
from statlab.driver import SelectionError
from statlab.methods import Stat
from statlab.models import get_adapter
from statlab.plan import PlanError, PruningPlan
from statlab.reference import budget
from statlab.reference.heads import group_rounds

from .test_costs import measured_macs
from .test_llama import logits, rel_error, windows


def tiny_llama(seed=0, *, kv_heads=2, heads=6, tied=False, layers=3):
    """A decoder of 6 query heads of width 8 (hidden 48) in ``kv_heads`` groups."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=8 * heads, intermediate_size=48, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=64,
        tie_word_embeddings=tied, attn_implementation="eager",
    )
    return transformers.LlamaForCausalLM(config).eval()


def heads_stat(**options):
    return Stat(attention_units="heads", **options)


def test_heads_view_of_a_gqa_layer():
    model = tiny_llama(kv_heads=2, heads=6)
    adapter = get_adapter(model)
    groups, heads = adapter.blocks(model)[0], adapter.blocks(model, "heads")[0]
    assert (groups.units, groups.unit_size, groups.heads_per_unit, groups.groups) == (2, 24, 3, 0)
    assert (heads.units, heads.unit_size, heads.heads_per_unit, heads.groups) == (6, 8, 1, 2)
    assert heads.attn_in == groups.attn_in[:1]  # W_Q alone: the key and value maps are kept whole
    mha = tiny_llama(kv_heads=4, heads=4)  # a head is a group: one view
    assert get_adapter(mha).blocks(mha, "heads") == get_adapter(mha).blocks(mha)
    with pytest.raises(ValueError, match="attention_units"):
        adapter.blocks(model, "neurons")


def test_module_costs_of_query_heads():
    model = tiny_llama(kv_heads=2, heads=6)
    adapter = get_adapter(model)
    s, d, dh = 24, 48, 8
    head, _ = module_costs(model, adapter, adapter.blocks(model, "heads"), "macs", s)[0]
    # a query head: its W_Q rows and W_O columns, its scores and weighted sum; the K/V maps of 2 groups once
    assert head.per_unit == 2 * s * d * dh + 2 * s * s * dh
    assert head.fixed == 2 * 2 * s * d * dh
    group, _ = module_costs(model, adapter, adapter.blocks(model), "macs", s)[0]
    assert head.cost(6) == pytest.approx(group.cost(2))  # the dense attention, counted either way
    params, _ = module_costs(model, adapter, adapter.blocks(model, "heads"), "params", s)[0]
    assert (params.per_unit, params.fixed) == (2 * dh * d, 2 * 2 * dh * d)
    assert budget.ModuleCost(6, 1.0, 5.0).cost(0) == 0.0 and budget.ModuleCost(6, 1.0, 5.0).cost(2) == 7.0


def test_stepped_curve_and_group_rounds():
    curve = np.array([1.0, 0.7, 0.5, 0.3, 0.2, 0.1, 0.0])
    np.testing.assert_array_equal(budget.stepped_curve(curve, 2), [1.0, 1.0, 0.5, 0.5, 0.2, 0.2, 0.0])
    with pytest.raises(ValueError):
        budget.stepped_curve(curve, 4)
    # heads 0-2 are group 0, 3-5 group 1; round j: each group's j-th head in order
    np.testing.assert_array_equal(group_rounds([4, 0, 1, 5, 2, 3], 2), [4, 0, 1, 5, 2, 3])
    np.testing.assert_array_equal(group_rounds([0, 1, 2, 4, 3, 5], 2), [0, 4, 1, 3, 2, 5])
    with pytest.raises(ValueError):
        group_rounds([0, 1, 1, 2], 2)


@pytest.mark.parametrize("kv_heads", [2, 3])
@pytest.mark.parametrize("budget_kind,fraction", [("sparsity", 0.3), ("mac_fraction", 0.5)])
def test_budget_met_and_equal_heads_per_group(kv_heads, budget_kind, fraction):
    dense = tiny_llama(kv_heads=kv_heads, heads=6)
    model = copy.deepcopy(dense)
    plan = statlab.prune(model, windows(), method=heads_stat(), base="tiny", **{budget_kind: fraction})
    kept = 1 - fraction if budget_kind == "sparsity" else fraction
    assert plan.meta["kept_cost"] <= kept * plan.meta["dense_cost"] + 1e-6
    assert plan.meta["attention_units"] == "heads" and plan.meta["method"] == "stat (query heads)"
    if budget_kind == "sparsity":  # the parameters removed are the cost model's
        removed = sum(p.numel() for p in dense.parameters()) - sum(p.numel() for p in model.parameters())
        assert removed == pytest.approx(plan.meta["dense_cost"] - plan.meta["kept_cost"])
    per_group = 6 // kv_heads
    for layer, attn in zip(plan.layers, (l.self_attn for l in model.model.layers)):
        heads = layer["attn_kept"]
        assert layer["attn_units"] == 6 and len(heads) % kv_heads == 0 and heads == sorted(heads)
        m = len(heads) // kv_heads
        assert [sum(h // per_group == g for h in heads) for g in range(kv_heads)] == [m] * kv_heads
        if m:
            assert attn.q_proj.out_features == len(heads) * 8 and attn.k_proj.out_features == kv_heads * 8
            assert attn.num_key_value_groups == m
        else:
            assert attn.k_proj.out_features == 0 and attn.v_proj.out_features == 0
    for seq_len in (7, 20):  # the analytic MACs of the pruned backbone (no LM head), against torch's counter
        assert block_macs(model.model, seq_len) == pytest.approx(measured_macs(model.model, seq_len), rel=0.01)
    out = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 7)


def test_some_layer_keeps_part_of_each_group():
    """At 30% sparsity the threshold keeps 2 of 3 query heads per group somewhere: the finer unit is used."""
    model = tiny_llama(kv_heads=2, heads=6, layers=4)
    plan = statlab.prune(model, windows(), sparsity=0.3, method=heads_stat(), base="tiny")
    assert any(0 < len(l["attn_kept"]) < 6 for l in plan.layers), [len(l["attn_kept"]) for l in plan.layers]


def test_plan_reloads_bit_identical_with_its_head_counts(tmp_path):
    dense = tiny_llama(kv_heads=2, heads=6, tied=True, layers=4)
    model = copy.deepcopy(dense)
    plan = statlab.prune(model, windows(), sparsity=0.3, method=heads_stat(), base="tiny")
    plan.save(tmp_path / "plan")
    reloaded = PruningPlan.load(tmp_path / "plan").apply(copy.deepcopy(dense))
    ids = windows(1, seed=11)[0]["input_ids"]
    assert torch.equal(logits(reloaded, ids), logits(model, ids))
    assert [l.self_attn.num_key_value_groups for l in reloaded.model.layers] == \
           [l.self_attn.num_key_value_groups for l in model.model.layers]


def test_tampered_head_layout_is_refused(tmp_path):
    dense = tiny_llama(kv_heads=2, heads=6)
    plan = statlab.prune(copy.deepcopy(dense), windows(), sparsity=0.3, method=heads_stat(), base="tiny")
    layer = next(l for l in plan.layers if 0 < len(l["attn_kept"]) < 6)
    layer["attn_kept"] = list(range(len(layer["attn_kept"])))  # all from group 0
    with pytest.raises(PlanError, match="as many"):
        plan.apply(copy.deepcopy(dense))


def test_sizes_must_be_multiples_of_the_groups():
    model = tiny_llama(kv_heads=2, heads=6)
    sizes = {(i, kind): 3 if kind == "attention" else 48 for i in range(3) for kind in ("attention", "mlp")}
    with pytest.raises(SelectionError, match="multiple of 2"):
        statlab.prune(model, windows(), sparsity=0.05, method=heads_stat(sizes=sizes), base="tiny")
    with pytest.raises(ValueError, match="uniform"):
        heads_stat(sizes="uniform")


def test_heads_beat_groups_where_groups_cannot_follow_the_budget():
    """On held-out inputs, query heads as units lose no more than whole groups at the same budget (± 10%)."""
    dense = tiny_llama(kv_heads=2, heads=6, layers=4)
    ids = windows(1, seed=5)[0]["input_ids"]
    errors = {}
    for units in ("groups", "heads"):
        model = copy.deepcopy(dense)
        statlab.prune(model, windows(), sparsity=0.3, method=Stat(attention_units=units), base="tiny")
        errors[units] = rel_error(logits(model, ids), logits(dense, ids))
    assert errors["heads"] <= 1.1 * errors["groups"], errors


def test_reference_backend_agrees_with_fast():
    dense = tiny_llama(kv_heads=2, heads=6)
    ids = windows(1, seed=7)[0]["input_ids"]
    plans, errors = {}, {}
    for backend in ("fast", "reference"):
        model = copy.deepcopy(dense)
        plans[backend] = statlab.prune(model, windows(), sparsity=0.3, backend=backend, method=heads_stat(),
                                       base="tiny")
        errors[backend] = rel_error(logits(model, ids), logits(dense, ids))
    assert [l["attn_kept"] for l in plans["fast"].layers] == [l["attn_kept"] for l in plans["reference"].layers]
    assert abs(errors["fast"] - errors["reference"]) <= 0.1 * errors["reference"] + 1e-4


@pytest.mark.parametrize("options", [dict(intercept=True), dict(ridge_rule="gcv"), dict(split=0.5),
                                     dict(dense_target=1.0)])
def test_other_options_combine_with_query_heads(options):
    model = tiny_llama(kv_heads=2, heads=6)
    plan = statlab.prune(model, windows(), sparsity=0.3, method=heads_stat(**options), base="tiny")
    assert plan.meta["kept_cost"] <= 0.7 * plan.meta["dense_cost"] + 1e-6
    assert all(len(l["attn_kept"]) % 2 == 0 for l in plan.layers)
    assert torch.isfinite(logits(model, windows(1, seed=2)[0]["input_ids"])).all()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("kv_heads,keep", [(3, 3), (2, 4)])
def test_dropped_heads_are_the_dense_model_without_them(attn, kv_heads, keep):
    """Without the correction, a pruned layer is the dense layer with the dropped heads' ``W_O`` columns zeroed."""
    dense = tiny_llama(kv_heads=kv_heads, heads=6)
    dense.set_attn_implementation(attn)
    sizes = {(i, kind): (keep if i == 1 else 6) if kind == "attention" else 48 for i in range(3)
             for kind in ("attention", "mlp")}
    model = copy.deepcopy(dense)
    plan = statlab.prune(model, windows(), sparsity=0.0, method=heads_stat(sizes=sizes, correction=False),
                         base="tiny")
    kept = plan.layers[1]["attn_kept"]
    per_group = 6 // kv_heads
    assert len(kept) == keep and sorted(h // per_group for h in kept) == sorted(list(range(kv_heads)) * (keep // kv_heads))
    masked = copy.deepcopy(dense)
    o_proj = masked.model.layers[1].self_attn.o_proj
    with torch.no_grad():
        for h in set(range(6)) - set(kept):
            o_proj.weight[:, h * 8:(h + 1) * 8] = 0
    ids = windows(1, seed=4)[0]["input_ids"]
    torch.testing.assert_close(logits(model, ids), logits(masked, ids), rtol=1e-5, atol=1e-5)
