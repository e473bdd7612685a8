"""Kwon et al. 2022 (``kwon``): its three stages against direct computations, and the method end to end."""

from __future__ import annotations

import copy
import functools
import itertools

import numpy as np
import pytest
import torch
import transformers

import statlab
from statlab.methods import METHODS, Kwon, get_method
from statlab.methods import kwon as kwon_lib
from statlab.models import get_adapter
from statlab.plan import PruningPlan
from statlab.reference.budget import ModuleCost

from .test_llama import tiny_llama, windows
from .test_methods_peers import FAMILIES, outputs, rel_error
from .test_prune import batches, tiny_bert

# --------------------------------------------------------------------------- stage 1: the Fisher pass


def direct_gradients(model, examples, loss_of):
    """Per-example mask gradients the plain way: one example at a time, one mask per unit shared by its tokens."""
    blocks = get_adapter(model).blocks(model)
    rows = {(b.index, kind): [] for b in blocks for kind in ("attention", "mlp")}
    for example in examples:
        masks, handles = {}, []
        for b in blocks:
            for kind, path, units, size in (("attention", b.attn_out, b.units, b.unit_size),
                                            ("mlp", b.mlp_out, b.mlp_units, 1)):
                mask = torch.ones(units, requires_grad=True)
                masks[(b.index, kind)] = mask
                handles.append(model.get_submodule(path).register_forward_pre_hook(
                    lambda mod, args, mask=mask, size=size: (args[0] * mask.repeat_interleave(size),)))
        try:
            loss = loss_of(model, example)
            grads = torch.autograd.grad(loss, list(masks.values()))
        finally:
            for h in handles:
                h.remove()
        for key, g in zip(masks, grads):
            rows[key].append(g.double().numpy())
    return {key: np.stack(r) for key, r in rows.items()}


def split(calibration):
    """Every example of ``calibration`` as a batch of one."""
    return [{k: v[i:i + 1] for k, v in b.items()} for b in calibration for i in range(b["input_ids"].shape[0])]


def check_gradients(model, calibration, target, loss_of, **kw):
    adapter = get_adapter(model)
    flags = [p.requires_grad for p in model.parameters()]
    got = kwon_lib.mask_gradients(model, adapter.blocks(model), calibration, target, **kw)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(not m._forward_pre_hooks for m in model.modules())
    expected = direct_gradients(model, split(calibration), loss_of)
    assert got.keys() == expected.keys()
    for key in got:
        scale = np.abs(expected[key]).max()
        assert scale > 0
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-4, atol=1e-5 * scale)
        np.testing.assert_allclose(kwon_lib.fisher_diagonal(got[key]), (expected[key] ** 2).sum(0),
                                   rtol=1e-4, atol=1e-9 * scale ** 2)


def tiny_classifier(num_labels, seed=0):
    """A task model: tiny BERT with a sequence-classification head."""
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                     num_labels=num_labels)
    return transformers.BertForSequenceClassification(config).eval()


def test_fisher_next_token_matches_per_example_autograd():
    model = tiny_llama(layers=2)

    def nll(model, example):  # next-token NLL of the text, summed over the sequence
        ids = example["input_ids"]
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1]
        return torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")

    check_gradients(model, windows(2, batch=3, seq=10), "next-token", nll)


def test_fisher_labels_matches_per_example_autograd():
    model = tiny_classifier(3)
    calibration = batches(2, batch=3, seq=12)
    for i, b in enumerate(calibration):
        b["labels"] = torch.tensor([i % 3, (i + 1) % 3, (i + 2) % 3])
    assert kwon_lib.resolve_target(model, get_adapter(model), calibration) == "labels"
    check_gradients(model, calibration, "labels", lambda model, example: model(**example).loss)


def test_fisher_hidden_matches_per_example_autograd():
    """Batches of one draw the same noise as the direct computation: ``y = h + ε`` on real tokens."""
    model = tiny_bert()
    calibration = batches(4, batch=1, seq=12)
    generator = torch.Generator().manual_seed(5)

    def sampled_mse(model, example):
        h = model(**example).last_hidden_state
        eps = torch.randn(h.shape, generator=generator) * example["attention_mask"][..., None]
        y = (h + eps).detach()
        return 0.5 * (((h - y) * example["attention_mask"][..., None]) ** 2).sum()

    check_gradients(model, calibration, "hidden", sampled_mse, seed=5)


# --------------------------------------------------------------------------- stage 1: the mask search


def brute_force(fisher, costs, kinds, fraction):
    """The largest kept Fisher over every subset of units whose cost fits."""
    units = [(i, u) for i, f in enumerate(fisher) for u in range(len(f))]
    target = fraction * sum(c.units * c.per_unit for c in costs) + 1e-9
    best = -1.0
    for keep in itertools.product((0, 1), repeat=len(units)):
        cost = sum(costs[i].per_unit for (i, _), k in zip(units, keep) if k)
        if cost <= target:
            best = max(best, sum(fisher[i][u] for (i, u), k in zip(units, keep) if k))
    return best


@pytest.mark.parametrize("seed", range(4))
def test_search_is_the_best_subset(seed):
    rng = np.random.default_rng(seed)
    kinds = ["attention", "mlp", "attention", "mlp"]
    sizes = [2, 3, 2, 4]
    costs = [ModuleCost(n, 7.0 if kind == "attention" else 2.0) for n, kind in zip(sizes, kinds)]
    fisher = [rng.exponential(size=n) * (3.0 if kind == "attention" else 1.0) for n, kind in zip(sizes, kinds)]
    for fraction in (0.15, 0.4, 0.6, 0.9, 1.0):
        kept = kwon_lib.search_masks(fisher, costs, kinds, fraction)
        cost = sum(len(k) * c.per_unit for k, c in zip(kept, costs))
        assert cost <= fraction * sum(c.units * c.per_unit for c in costs) + 1e-9
        got = sum(fisher[i][kept[i]].sum() for i in range(len(kept)))
        assert got == pytest.approx(brute_force(fisher, costs, kinds, fraction), rel=1e-12)


def test_search_extremes():
    fisher = [np.array([3.0, 1.0]), np.array([2.0, 0.5, 4.0])]
    costs = [ModuleCost(2, 5.0), ModuleCost(3, 1.0)]
    assert kwon_lib.search_masks(fisher, costs, ["attention", "mlp"], 1.0) == [[0, 1], [0, 1, 2]]
    assert kwon_lib.search_masks(fisher, costs, ["attention", "mlp"], 1e-6) == [[], []]
    # 6 of 13: one head (5) and the best neuron (1), or all three neurons (3) alone: 3 + 4 > 2 + 0.5 + 4
    assert kwon_lib.search_masks(fisher, costs, ["attention", "mlp"], 6 / 13) == [[0], [2]]


# --------------------------------------------------------------------------- stage 2: rearrangement


def pruned_of(kept, n):
    return sorted(set(range(n)) - set(kept))


@pytest.mark.parametrize("seed", range(6))
def test_rearrangement_never_raises_the_block_objective(seed):
    rng = np.random.default_rng(seed)
    n, examples = 12, 6
    mixing = rng.standard_normal((n, n)) * (rng.random((n, n)) < 0.3)
    grads = rng.standard_normal((examples, n)) @ (np.eye(n) + mixing)  # correlated units
    fisher = kwon_lib.fisher_diagonal(grads)
    for k in range(n + 1):
        kept = sorted(np.argsort(-fisher, kind="stable")[:k].tolist())  # stage 1's mask of this layer
        new = kwon_lib.rearrange_units(grads, kept)
        assert len(new) == k and len(set(new)) == k
        before = kwon_lib.block_objective(grads, pruned_of(kept, n))
        assert kwon_lib.block_objective(grads, pruned_of(new, n)) <= before + 1e-9 * max(before, 1.0)


def test_rearrangement_swaps_in_a_cancelling_unit():
    """Units 0 and 1 add up; unit 2 alone matters more than either, but cancels them (``g_2 = −1.1 g_0``)."""
    v, w = np.array([1.0, 0.0, 0.0]), np.array([0.0, 5.0 ** 0.5, 0.0])
    grads = np.stack([v, v, -1.1 * v, w], axis=1)  # (examples, units)
    kept = [2, 3]  # stage 1: the two largest diagonal entries (1.21 and 5); pruning {0, 1} costs 4
    new = kwon_lib.rearrange_units(grads, kept)
    assert 2 not in new and 3 in new and len(new) == 2
    assert kwon_lib.block_objective(grads, pruned_of(new, 4)) == pytest.approx(0.01)
    assert kwon_lib.rearrange_units(grads, [3]) == [3]  # pruning 0, 1, 2 together is already best


# --------------------------------------------------------------------------- stage 3: mask tuning


@pytest.mark.parametrize("dense_target", [False, True])
@pytest.mark.parametrize("unit_size", [1, 3])
def test_tuned_scales_are_the_least_squares_fit(dense_target, unit_size):
    rng = np.random.default_rng(unit_size)
    units, out, N = 5, 4, 200
    Z = rng.standard_normal((N, units * unit_size)) @ rng.standard_normal((units * unit_size,) * 2)
    Zp = Z + 0.2 * rng.standard_normal(Z.shape)  # what the pruned model feeds the map
    W = rng.standard_normal((out, units * unit_size))
    kept = [0, 2, 3]
    A = np.stack([(Zp[:, u * unit_size:(u + 1) * unit_size] @ W[:, u * unit_size:(u + 1) * unit_size].T).ravel()
                  for u in kept], axis=1)  # (N · out, k): each kept unit's output
    y = ((Z if dense_target else Zp) @ W.T).ravel()
    error = torch.from_numpy(Zp.T @ (Z - Zp)) if dense_target else None
    AtA, Aty = kwon_lib.unit_system(torch.from_numpy(W), torch.from_numpy(Zp.T @ Zp), unit_size, error)
    idx = torch.tensor(kept)
    for damp in (0.0, 30.0):
        s, converged = kwon_lib.tuned_scales(AtA[idx][:, idx], Aty[idx], damp=damp)
        augmented = np.vstack([A, damp * np.eye(len(kept))])  # ‖A s − y‖² + damp² ‖s − 1‖²
        expected = np.linalg.lstsq(augmented, np.concatenate([y, damp * np.ones(len(kept))]), rcond=None)[0]
        assert converged
        np.testing.assert_allclose(s, expected, rtol=1e-7, atol=1e-9)


def test_tuned_scales_keep_one_where_nothing_is_observed():
    AtA = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    s, converged = kwon_lib.tuned_scales(AtA, torch.tensor([4.0, 0.0]))
    assert converged and s == pytest.approx([2.0, 1.0])


# --------------------------------------------------------------------------- end to end


@functools.lru_cache(maxsize=None)
def _prune(family, fraction=0.5, backend="fast", propagate=True, **options):
    make, data = FAMILIES[family]
    dense = make()
    model = copy.deepcopy(dense)
    flags = [p.requires_grad for p in model.parameters()]
    method = Kwon(**options) if options else "kwon"
    plan = statlab.prune(model, data(4), mac_fraction=fraction, method=method, base="tiny", backend=backend,
                         propagate=propagate)
    restored = (all(not (m._forward_pre_hooks or m._forward_hooks) for m in model.modules())
                and [p.requires_grad for p in model.parameters()] == flags
                and all(p.grad is None for p in model.parameters()) and not model.training)
    held_out = data(1, seed=99)[0]
    return plan, rel_error(outputs(model, held_out), outputs(dense, held_out)), restored, model, dense


def _random_error(family, fraction):
    make, data = FAMILIES[family]
    dense = make()
    model = copy.deepcopy(dense)
    statlab.prune(model, data(4), mac_fraction=fraction, method="random", base="tiny")
    held_out = data(1, seed=99)[0]
    return rel_error(outputs(model, held_out), outputs(dense, held_out))


def test_registered():
    assert METHODS["kwon"] is Kwon and get_method("kwon").name == "kwon"
    with pytest.raises(ValueError, match="target"):
        Kwon(target="kl")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_budget_restored_and_beats_random(family):
    plan, error, restored, _, _ = _prune(family, 0.4)
    assert plan.meta["kept_cost"] <= 0.4 * plan.meta["dense_cost"] + 1e-6
    assert plan.meta["kept_cost"] >= 0.3 * plan.meta["dense_cost"]
    assert restored
    expected = "next-token" if family == "llama-gqa" else "hidden"
    assert plan.meta["kwon"]["target"] == expected and plan.meta["method"] == "kwon"
    assert np.isfinite(error) and error < _random_error(family, 0.4)


@pytest.mark.parametrize("family", ["bert", "llama-gqa"])
def test_plan_round_trip(family, tmp_path):
    plan, _, _, model, dense = _prune(family, 0.4)
    plan.save(tmp_path / "plan")
    reloaded = PruningPlan.load(tmp_path / "plan").apply(copy.deepcopy(dense))
    held_out = FAMILIES[family][1](1, seed=99)[0]
    assert torch.equal(outputs(reloaded, held_out), outputs(model, held_out))


def test_stages_each_help_and_variants_run():
    """On tiny BERT: tuning lowers the error of the same mask; the one-pass and reference variants run."""
    _, full, _, _, _ = _prune("bert", 0.4)
    _, untuned, _, _, _ = _prune("bert", 0.4, tuning=False)
    plan, driver_target, _, _, _ = _prune("bert", 0.4, dense_target=False)
    assert full < untuned and driver_target < untuned
    assert plan.meta["method"] == "kwon (driver target)"
    ref_plan, ref_error, _, _, _ = _prune("bert", 0.4, backend="reference")
    fast_plan, _, _, _, _ = _prune("bert", 0.4)
    assert [l["mlp_kept"] for l in ref_plan.layers] == [l["mlp_kept"] for l in fast_plan.layers]
    assert abs(ref_error - full) <= 1e-3 * full + 1e-6
    plan, error, restored, _, _ = _prune("llama-gqa", 0.4, propagate=False)
    assert restored and np.isfinite(error) and plan.meta["kept_cost"] <= 0.4 * plan.meta["dense_cost"] + 1e-6


def test_extremes():
    _, error, _, _, _ = _prune("llama-gqa", 1.0)
    assert error < 1e-5  # every unit kept, the tuned scales reproduce the dense outputs
    plan, error, _, _, _ = _prune("distilbert", 1e-6)
    assert all(not l["attn_kept"] and not l["mlp_kept"] for l in plan.layers) and np.isfinite(error)


def test_labels_target_on_a_task_model():
    model = tiny_classifier(2)
    calibration = batches(4)
    for i, b in enumerate(calibration):
        b["labels"] = torch.arange(b["input_ids"].shape[0]) % 2
    plan = statlab.prune(model, calibration, mac_fraction=0.5, method="kwon", base="tiny")
    assert plan.meta["kwon"]["target"] == "labels"
    assert plan.meta["kept_cost"] <= 0.5 * plan.meta["dense_cost"] + 1e-6
    with torch.no_grad():
        logits = model(input_ids=calibration[0]["input_ids"], attention_mask=calibration[0]["attention_mask"]).logits
    assert torch.isfinite(logits).all()
