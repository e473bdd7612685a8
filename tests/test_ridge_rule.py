"""The correction's ridge by generalised cross-validation: formula on both sides, behaviour, and STAT's option."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import statlab
from statlab import fast, reference
from statlab.methods import Stat, method_and_ridge

from .test_llama import tiny_llama, windows
from .test_prune import batches, tiny_bert


def _problem(N, n=24, out=6, noise=0.5, seed=0):
    """Activations whose columns past the 8th are linear in the first 8 plus ``noise``; an output map."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((N, 8))
    Z = np.hstack([base, base @ rng.standard_normal((8, n - 8)) + noise * rng.standard_normal((N, n - 8))])
    return Z, rng.standard_normal((out, n))


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # N < k: the reference's solve says so
@pytest.mark.parametrize("N,k", [(400, 8), (60, 12), (20, 12), (10, 12)])
def test_fast_scores_every_candidate_as_the_reference_does(N, k):
    Z, W = _problem(N)
    cols = np.arange(k)
    ours = reference.gcv_ridge(Z, W, cols)
    theirs = fast.gcv_ridge(torch.from_numpy(Z), torch.from_numpy(W), torch.from_numpy(cols))
    finite = np.isfinite(ours.scores)
    np.testing.assert_array_equal(finite, np.isfinite(theirs.scores.numpy()))
    # N < k: a rank-deficient kept block, whose smallest ridges leave both sides' solves near-singular
    rtol = 1e-10 if N > 2 * k else 1e-5
    np.testing.assert_allclose(theirs.scores.numpy()[finite], ours.scores[finite], rtol=rtol)
    assert theirs.ridge == ours.ridge
    gram = fast.gcv_ridge_from_gram(torch.from_numpy(Z.T @ Z), torch.from_numpy(W), cols, N)
    np.testing.assert_allclose(gram.scores.numpy()[finite], ours.scores[finite], rtol=rtol)


def test_gcv_is_the_hat_matrix_formula():
    """N·RSS/(N − df)² from an explicit hat matrix H = A (AᵀA + λ)⁻¹ Aᵀ, for one candidate."""
    Z, W = _problem(50)
    cols, rest = np.arange(10), np.arange(10, 24)
    ridge = 0.01
    got = reference.gcv_ridge(Z, W, cols, ridges=(ridge,)).scores[0]
    A, Y = Z[:, cols], Z[:, rest] @ W[:, rest].T
    lam = (ridge + 10 * np.finfo(float).eps) * np.trace(A.T @ A) / 10
    H = A @ np.linalg.inv(A.T @ A + lam * np.eye(10)) @ A.T
    resid = Y - H @ Y
    assert got == pytest.approx(50 * np.sum(resid**2) / (50 - np.trace(H)) ** 2, rel=1e-10)


def test_gcv_regularises_where_the_tokens_are_few_and_not_where_they_are_many():
    """A noiseless linear relation with many tokens: the smallest ridge. Noise with few tokens per column: a large one."""
    Z, W = _problem(2000, noise=0.0)
    assert reference.gcv_ridge(Z, W, np.arange(8)).ridge == 0.0
    Z, W = _problem(16, noise=2.0, seed=3)
    assert reference.gcv_ridge(Z, W, np.arange(12)).ridge >= 1e-2


def test_bad_candidates_and_columns_are_refused():
    Z, W = _problem(40)
    for ridges in ((), (-1.0,), (np.inf,)):
        with pytest.raises(ValueError, match="ridges"):
            reference.gcv_ridge(Z, W, np.arange(4), ridges=ridges)
        with pytest.raises(ValueError, match="ridges"):
            fast.gcv_ridge(torch.from_numpy(Z), torch.from_numpy(W), np.arange(4), ridges=ridges)
    for cols in ([0, 0, 1], [0, 24]):
        with pytest.raises(ValueError, match="distinct columns"):
            reference.gcv_ridge(Z, W, np.array(cols))
        with pytest.raises(ValueError, match="distinct columns"):
            fast.gcv_ridge(torch.from_numpy(Z), torch.from_numpy(W), cols)


def _run(make, data, method, backend="fast"):
    dense = make()
    model = copy.deepcopy(dense)
    plan = statlab.prune(model, data, mac_fraction=0.5, method=method, base="tiny", backend=backend)
    return dense, model, plan


@pytest.mark.parametrize("make,data", [(tiny_bert, batches), (tiny_llama, windows)], ids=["bert", "llama-gqa"])
def test_stat_gcv_keeps_the_same_units_on_both_backends(make, data):
    _, fast_model, a = _run(make, data(4), Stat(ridge_rule="gcv"))
    _, ref_model, b = _run(make, data(4), Stat(ridge_rule="gcv"), backend="reference")
    assert a.meta["method"] == "stat (gcv ridge)"
    for x, y in zip(a.layers, b.layers):  # the same kept units: the pivots do not depend on the ridge
        assert x["attn_kept"] == y["attn_kept"] and x["mlp_kept"] == y["mlp_kept"]
        np.testing.assert_allclose(x["mlp_residuals"], y["mlp_residuals"], atol=1e-5)  # fp32 dense pass (fast)
    for name, tensor in a.tensors.items():
        torch.testing.assert_close(tensor, b.tensors[name], rtol=1e-4, atol=1e-5)


def test_stat_gcv_changes_only_the_corrections():
    """Same units as the fixed ridge; the output maps differ where GCV chose a ridge, and the budget holds."""
    _, _, fixed = _run(tiny_bert, batches(4), Stat())
    _, _, gcv = _run(tiny_bert, batches(4), Stat(ridge_rule="gcv"))
    assert fixed.layers == gcv.layers and fixed.meta["kept_cost"] == gcv.meta["kept_cost"]
    assert any(not torch.equal(fixed.tensors[k], gcv.tensors[k]) for k in fixed.tensors)


def test_ridge_rule_is_checked():
    with pytest.raises(ValueError, match="ridge_rule"):
        Stat(ridge_rule="loo")


def test_method_and_ridge_maps_the_word_gcv_to_stats_rule():
    assert method_and_ridge("flap", "0.01") == ("flap", 0.01)  # a number passes through, as a float
    assert method_and_ridge("stat", 0) == ("stat", 0.0)
    method, ridge = method_and_ridge("stat", " GCV ", seed=3)
    assert isinstance(method, Stat) and method.ridge_rule == "gcv" and method.seed == 3 and ridge == 0.0
    with pytest.raises(ValueError, match="STAT's options"):
        method_and_ridge("slimllm", "gcv")  # no other method has the rule: never a silent fixed ridge
    method, ridge = method_and_ridge("stat", "0.01", dense_target=0.5)
    assert method.label == "stat (dense target 0.5)" and method.ridge_rule == "fixed" and ridge == method.ridge == 0.01
    assert method_and_ridge("flap", 0, dense_target=0) == ("flap", 0.0)  # the default asks nothing of FLAP
    with pytest.raises(ValueError, match="dense_target=1"):
        method_and_ridge("flap", 0, dense_target=1)


def test_method_and_ridge_passes_stats_non_default_options_only():
    assert method_and_ridge("stat", 0, split=None, intercept=False, dense_target=0.0) == ("stat", 0.0)
    method, _ = method_and_ridge("stat", 0, split=0.0)  # a share of 0 is an option, not the default None
    assert isinstance(method, Stat) and method.split == 0.0 and method.label == "stat (split 0)"
    method, _ = method_and_ridge("stat", 0, split="proportional")
    assert method.label == "stat (split proportional)"
    with pytest.raises(ValueError, match="split=0.5"):
        method_and_ridge("goa", 0, split=0.5)
    with pytest.raises(ValueError, match="no options"):
        method_and_ridge("stat", 0, colour="blue")
