"""The Llama adapter on tiny random decoders: GQA and MHA, tied and untied, budgets, plans, dtypes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import transformers

import statlab
from statlab.costs import module_costs
from statlab.models import get_adapter
from statlab.plan import PruningPlan
from statlab.methods import unit_energies
from statlab.reference import budget as budget_lib


def tiny_llama(seed=0, *, kv_heads=2, heads=4, tied=False, layers=3, dtype=torch.float32):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=64,
        tie_word_embeddings=tied, attn_implementation="eager",
    )
    model = transformers.LlamaForCausalLM(config).eval()
    return model.to(dtype)


def windows(n=6, seed=0, batch=4, seq=24, vocab=96):
    """Calibration as a decoder sees it: full windows of token ids, no padding."""
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, vocab, (batch, seq), generator=g)} for _ in range(n)]


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits.float()


def rel_error(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("kv_heads", [4, 2, 1])  # MHA, GQA, MQA
def test_blocks_describe_kv_groups(kv_heads):
    model = tiny_llama(kv_heads=kv_heads)
    b = get_adapter(model).blocks(model)[0]
    assert (b.units, b.heads_per_unit, b.head_dim) == (kv_heads, 4 // kv_heads, 8)
    assert b.unit_size == b.heads_per_unit * b.head_dim
    assert model.get_submodule(b.attn_out).in_features == b.units * b.unit_size
    assert b.mlp_in == ("model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj")


@pytest.mark.parametrize("kv_heads,tied", [(2, False), (4, True), (1, False)])
@pytest.mark.parametrize("sparsity", [0.2, 0.5])
def test_sparsity_is_met_and_stat_beats_magnitude(kv_heads, tied, sparsity):
    dense = tiny_llama(kv_heads=kv_heads, tied=tied)
    held_out = windows(1, seed=99)[0]["input_ids"]
    stat_model, mag_model, act_model = copy.deepcopy(dense), copy.deepcopy(dense), copy.deepcopy(dense)
    plan = statlab.prune(stat_model, windows(), sparsity=sparsity, base="tiny")
    mag = statlab.prune(mag_model, windows(), sparsity=sparsity, method="magnitude", base="tiny")
    act = statlab.prune(act_model, windows(), sparsity=sparsity, method="activation", base="tiny")
    # the parameter count of the pruned model agrees with the plan's cost model
    removed = sum(p.numel() for p in dense.parameters()) - sum(p.numel() for p in stat_model.parameters())
    assert removed == pytest.approx(plan.meta["dense_cost"] - plan.meta["kept_cost"])
    for p in (plan, mag, act):
        assert p.meta["kept_cost"] <= (1 - sparsity) * p.meta["dense_cost"] + 1e-6
    reference = logits(dense, held_out)
    stat_error = rel_error(logits(stat_model, held_out), reference)
    assert stat_error < rel_error(logits(mag_model, held_out), reference)
    assert stat_error < rel_error(logits(act_model, held_out), reference)
    if tied:
        assert stat_model.lm_head.weight is stat_model.model.embed_tokens.weight


def test_groups_stay_whole_and_generate_works():
    model = tiny_llama(kv_heads=2)
    plan = statlab.prune(model, windows(), sparsity=0.5, base="tiny")
    for block, layer in zip(get_adapter(model).blocks(model), plan.layers):
        attn = model.get_submodule(block.attention)
        k = len(layer["attn_kept"])
        if k:
            assert attn.q_proj.out_features == k * 2 * 8 and attn.k_proj.out_features == k * 8
            assert attn.num_key_value_groups == 2
    out = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=5, do_sample=False)
    assert out.shape == (1, 8)


def test_full_budget_is_exact_and_removal_runs():
    dense = tiny_llama()
    ids = windows(1, seed=3)[0]["input_ids"]
    model = copy.deepcopy(dense)
    statlab.prune(model, windows(), sparsity=0.0, base="tiny")
    torch.testing.assert_close(logits(model, ids), logits(dense, ids), rtol=1e-4, atol=1e-4)
    gone = copy.deepcopy(dense)
    plan = statlab.prune(gone, windows(), sparsity=1 - 1e-6, method="magnitude", base="tiny")
    assert all(len(l["attn_kept"]) == 0 and len(l["mlp_kept"]) == 0 for l in plan.layers)
    assert torch.isfinite(logits(gone, ids)).all()
    assert gone.generate(torch.tensor([[1, 2]]), max_new_tokens=3, do_sample=False).shape == (1, 5)


def test_mac_fraction_counts_gqa_units():
    model = tiny_llama(kv_heads=2)
    adapter = get_adapter(model)
    costs = module_costs(model, adapter, adapter.blocks(model), "macs", 24)
    # a unit: 2 query heads (q and o projections, scores, weighted sum) and 1 K/V head
    assert costs[0][0].per_unit == (2 * 2 + 2) * 24 * 32 * 8 + 2 * 2 * 24 * 24 * 8
    assert costs[0][1].per_unit == 3 * 24 * 32
    plan = statlab.prune(model, windows(), mac_fraction=0.6, base="tiny")
    assert plan.meta["kept_cost"] <= 0.6 * plan.meta["dense_cost"] + 1e-6


def test_plan_round_trip_is_bit_identical(tmp_path):
    dense = tiny_llama(tied=True)
    model = copy.deepcopy(dense)
    plan = statlab.prune(model, windows(), sparsity=0.3, base="tiny")
    plan.save(tmp_path / "plan")
    reloaded = PruningPlan.load(tmp_path / "plan").apply(copy.deepcopy(dense))
    ids = windows(1, seed=11)[0]["input_ids"]
    assert torch.equal(logits(reloaded, ids), logits(model, ids))


def test_reference_backend_agrees_with_fast():
    """Same tolerance and reason as for the encoders (tests/test_prune.py)."""
    dense = tiny_llama()
    ids = windows(1, seed=7)[0]["input_ids"]
    errors = {}
    for backend in ("fast", "reference"):
        model = copy.deepcopy(dense)
        statlab.prune(model, windows(), sparsity=0.4, backend=backend, base="tiny")
        errors[backend] = rel_error(logits(model, ids), logits(dense, ids))
    assert abs(errors["fast"] - errors["reference"]) <= 0.1 * errors["reference"] + 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_keep_their_dtype(dtype):
    dense = tiny_llama(dtype=dtype)
    model = copy.deepcopy(dense)
    plan = statlab.prune(model, windows(), sparsity=0.3, base="tiny")
    assert plan.meta["dtype"] == str(dtype).removeprefix("torch.")
    assert {p.dtype for p in model.parameters()} == {dtype}
    assert all(t.dtype == dtype for t in plan.tensors.values())
    ids = windows(1, seed=5)[0]["input_ids"]
    assert torch.isfinite(logits(model, ids)).all()


def test_pre_ln_weights_follow_the_pivot_trend():
    """Pivots on an exact exponential trend weigh 1; one above the trend weighs more."""
    pivots = 3.0 * np.exp(0.4 * np.arange(6))
    np.testing.assert_allclose(budget_lib.pre_ln_layer_weights(pivots), np.ones(6), rtol=1e-10)
    pivots[0] *= 5
    w = budget_lib.pre_ln_layer_weights(pivots)
    assert w[0] == w.max() > 1.5
    with pytest.raises(ValueError, match="finite"):
        budget_lib.pre_ln_layer_weights([1.0, np.nan])


def test_activation_baseline_keeps_the_largest_output_energies():
    from statlab.capture import capture
    from statlab.driver import _module

    dense = tiny_llama(kv_heads=2)
    b = get_adapter(dense).blocks(dense)[1]
    stats = capture(dense, windows(), {f"layer 1 {p}": path for p, path in (("attention", b.attn_out), ("mlp", b.mlp_out))},
                    precision="fp32")
    energy_m = unit_energies(_module(dense, b, "mlp", stats, "fast", 0.0))
    energy_a = unit_energies(_module(dense, b, "attention", stats, "fast", 0.0))
    # against the definition: the output of each unit alone
    with torch.no_grad():
        Z = torch.cat([x.reshape(-1, 48) for x in _inputs(dense, b.mlp_out, windows())]).double()
    W = dense.get_submodule(b.mlp_out).weight.detach().double()
    np.testing.assert_allclose(energy_m, [(Z[:, [j]] @ W[:, [j]].T).square().sum() for j in range(48)], rtol=1e-4)
    plan = statlab.prune(copy.deepcopy(dense), windows(), sparsity=0.5, method="activation", base="tiny")
    k_m, k_a = len(plan.layers[1]["mlp_kept"]), len(plan.layers[1]["attn_kept"])
    assert plan.layers[1]["mlp_kept"] == np.argsort(-energy_m, kind="stable")[:k_m].tolist()
    assert plan.layers[1]["attn_kept"] == np.argsort(-energy_a, kind="stable")[:k_a].tolist()


def _inputs(model, path, batches):
    seen = []
    handle = model.get_submodule(path).register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        for batch in batches:
            model(**batch, use_cache=False)
    finally:
        handle.remove()
    return seen
