"""Pruning one module: reference vs fast, and against the dense module's outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import statlab.reference as ref
from statlab import fast
from statlab.fast.heads import prune_heads_from_gram as fast_heads
from statlab.fast.mlp import prune_mlp_from_gram as fast_mlp
from statlab.reference.heads import prune_heads as ref_heads
from statlab.reference.mlp import prune_mlp as ref_mlp


def mlp_case(seed=0, N=800, d=24, n=64):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, d))
    W1 = rng.standard_normal((n, 6)) @ rng.standard_normal((6, d)) / 3  # low-rank-ish hidden layer
    Z = np.maximum(X @ W1.T + 0.1 * rng.standard_normal(n), 0)
    W2 = rng.standard_normal((d, n)) / np.sqrt(n)
    return Z, W2


def heads_case(seed=0, N=600, heads=8, dh=4, out=16, rank=12):
    rng = np.random.default_rng(seed)
    C = rng.standard_normal((N, rank)) @ rng.standard_normal((rank, heads * dh))
    C += 0.05 * rng.standard_normal(C.shape)
    W_O = rng.standard_normal((out, heads * dh))
    return C, W_O


@pytest.mark.parametrize("k", [0, 10, 32, 64])
def test_mlp_fast_matches_reference(k):
    Z, W2 = mlp_case()
    expected = ref_mlp(Z, W2, k)
    got = fast_mlp(torch.as_tensor(Z.T @ Z), torch.as_tensor(W2), k)
    np.testing.assert_allclose(got.residuals.numpy(), expected.residuals, atol=1e-6)
    out_ref = Z[:, expected.idx] @ expected.weight.T
    out_fast = Z[:, got.idx.numpy()] @ got.weight.numpy().T
    dense = Z @ W2.T
    err_ref = np.linalg.norm(out_ref - dense) / np.linalg.norm(dense)
    err_fast = np.linalg.norm(out_fast - dense) / np.linalg.norm(dense)
    assert err_fast <= 1.01 * err_ref + 1e-7


def test_mlp_correction_beats_plain_dropping():
    Z, W2 = mlp_case(seed=1)
    result = ref_mlp(Z, W2, 16)
    dense = Z @ W2.T
    corrected = np.linalg.norm(Z[:, result.idx] @ result.weight.T - dense)
    dropped = np.linalg.norm(Z[:, result.idx] @ W2[:, result.idx].T - dense)
    assert corrected < 0.5 * dropped


@pytest.mark.parametrize("k", [0, 1, 3, 8])
@pytest.mark.parametrize("unit_size", [4, 8])  # a head, or a GQA group of two heads
def test_heads_fast_matches_reference(k, unit_size):
    C, W_O = heads_case()
    units = C.shape[1] // unit_size
    k = min(k, units)
    expected = ref_heads(C, W_O, unit_size, k)
    got = fast_heads(torch.as_tensor(C.T @ C), torch.as_tensor(W_O), unit_size, k)
    np.testing.assert_array_equal(got.idx.numpy(), expected.idx)
    np.testing.assert_allclose(got.residuals.numpy(), expected.residuals, atol=1e-6)
    np.testing.assert_allclose(got.weight.numpy(), expected.weight, atol=1e-6)
    cols = (expected.idx[:, None] * unit_size + np.arange(unit_size)).reshape(-1)
    dense = C @ W_O.T
    err = np.linalg.norm(C[:, cols] @ expected.weight.T - dense) / np.linalg.norm(dense)
    assert err == pytest.approx(expected.residuals[k], abs=1e-9)


def test_heads_residual_curve_is_monotone_and_ends_at_zero():
    C, W_O = heads_case(seed=3)
    result = ref_heads(C, W_O, 4, 4)
    assert result.residuals[0] == pytest.approx(1.0) and result.residuals[-1] == 0
    assert np.all(np.diff(result.residuals) <= 1e-12)


def test_heads_bad_k():
    C, W_O = heads_case()
    with pytest.raises(ValueError, match="units"):
        ref_heads(C, W_O, 4, 9)
    with pytest.raises(ValueError, match="units"):
        fast_heads(torch.as_tensor(C.T @ C), torch.as_tensor(W_O), 4, 9)


@pytest.mark.parametrize("k", [0, 5, 20, 63])
def test_mlp_residual_curve_is_the_output_error(k):
    """residuals[k] is the relative output error of keeping the first k pivots with exact coefficients."""
    Z, W2 = mlp_case(seed=2)
    full = ref_mlp(Z, W2, 64)
    at_k = ref_mlp(Z, W2, k)
    dense = Z @ W2.T
    err = np.linalg.norm(Z[:, at_k.idx] @ at_k.weight.T - dense) / np.linalg.norm(dense)
    assert full.residuals[k] == pytest.approx(err, rel=1e-6, abs=1e-9)
    fast_curve = fast_mlp(torch.as_tensor(Z.T @ Z), torch.as_tensor(W2), k).residuals.numpy()
    np.testing.assert_allclose(fast_curve, full.residuals, atol=1e-6)
