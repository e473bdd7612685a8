"""The reference ID against SciPy: ``scipy.linalg.interpolative`` and ``qr(pivoting=True)``."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.linalg.interpolative as sli

from statlab.reference import (
    countsketch,
    gaussian_sketch,
    interpolative_decomposition,
    reconstruction_error,
    ridge_least_squares,
)

from .conftest import low_rank_plus_noise, with_spectrum


def well_separated(rng, N=300, n=20):
    """Columns with norms 2^-j in random directions: every pivot is a clear winner."""
    return rng.standard_normal((N, n)) * 2.0 ** -np.arange(n)


def test_interpolation_identity_and_shapes(rng):
    Z = low_rank_plus_noise(rng, 200, 30, rank=8)
    result = interpolative_decomposition(Z, 10)
    assert result.idx.shape == (10,) and result.coef.shape == (10, 30)
    assert result.errors.shape == (30,)
    np.testing.assert_array_equal(result.coef[:, result.idx], np.eye(10))
    assert len(set(result.idx.tolist())) == 10


def test_matches_scipy_pivoted_qr(rng):
    Z = rng.standard_normal((100, 25))
    R, perm = scipy.linalg.qr(Z, mode="r", pivoting=True)
    result = interpolative_decomposition(Z, 12)
    np.testing.assert_array_equal(result.idx, perm[:12])
    np.testing.assert_allclose(result.errors, np.abs(np.diag(R)))
    # the coefficients are the least-squares fit of every column on the kept ones
    fit, *_ = np.linalg.lstsq(Z[:, result.idx], Z, rcond=None)
    np.testing.assert_allclose(result.coef, fit, atol=1e-10)


@pytest.mark.parametrize("k", [3, 8, 15])
def test_agrees_with_scipy_interpolative(rng, k):
    Z = well_separated(rng)
    idx, proj = sli.interp_decomp(Z, k, rand=False)
    ours = interpolative_decomposition(Z, k)
    assert set(ours.idx.tolist()) == set(idx[:k].tolist())
    theirs = Z[:, idx[:k]] @ np.hstack([np.eye(k), proj])[:, np.argsort(idx)]
    their_error = np.linalg.norm(Z - theirs) / np.linalg.norm(Z)
    np.testing.assert_allclose(reconstruction_error(Z, ours), their_error, rtol=1e-8)


def test_errors_non_increasing_and_bound_the_svd(rng):
    s = np.logspace(0, -6, 40)
    Z = with_spectrum(rng, 400, 40, s)
    result = interpolative_decomposition(Z)
    assert np.all(np.diff(result.errors) <= 1e-12 * result.errors[0])
    # residuals[k] is the Frobenius error of the k-column ID with exact coefficients
    assert result.residuals[0] == pytest.approx(np.linalg.norm(Z)) and result.residuals[-1] == 0
    for k in (5, 10, 20):
        part = interpolative_decomposition(Z, k)
        direct = np.linalg.norm(Z - Z[:, part.idx] @ part.coef)
        assert result.residuals[k] == pytest.approx(direct, rel=1e-6)
    for k in (5, 10, 20):
        part = interpolative_decomposition(Z, k)
        # no k columns can beat the best rank-k approximation (Eckart–Young)
        best = np.sqrt(np.sum(s[k:] ** 2)) / np.sqrt(np.sum(s**2))
        assert reconstruction_error(Z, part) >= best * (1 - 1e-9)


def test_full_rank_keeps_everything_exactly(rng):
    Z = rng.standard_normal((50, 12))
    result = interpolative_decomposition(Z)
    assert sorted(result.idx.tolist()) == list(range(12))
    assert reconstruction_error(Z, result) < 1e-14


def test_keep_nothing(rng):
    Z = rng.standard_normal((50, 12))
    result = interpolative_decomposition(Z, 0)
    assert result.idx.shape == (0,) and result.coef.shape == (0, 12)
    assert reconstruction_error(Z, result) == pytest.approx(1.0)


def test_more_columns_than_rows(rng):
    Z = rng.standard_normal((6, 20))
    result = interpolative_decomposition(Z, 10)
    assert result.errors.shape == (6,)
    assert reconstruction_error(Z, interpolative_decomposition(Z, 6)) < 1e-12
    assert reconstruction_error(Z, result) < 1e-12
    assert np.all(np.isfinite(result.coef))


def test_duplicated_and_zero_columns(rng):
    base = rng.standard_normal((80, 6))
    Z = np.hstack([base, base[:, :3], np.zeros((80, 2))])  # 6 independent, 3 copies, 2 zeros
    result = interpolative_decomposition(Z, 6)
    kept = set(result.idx.tolist())
    assert not kept & {9, 10}, "a zero column was kept before the independent ones"
    assert len({j % 6 for j in kept if j < 9}) == 6, "two copies of one column were kept"
    assert reconstruction_error(Z, result) < 1e-12
    over = interpolative_decomposition(Z, 10)  # beyond the rank: still finite and exact
    assert np.all(np.isfinite(over.coef)) and reconstruction_error(Z, over) < 1e-12


def test_ill_conditioned(rng):
    Z = with_spectrum(rng, 300, 30, np.logspace(0, -9, 30))  # cond 1e9
    assert np.linalg.cond(Z) > 1e8
    for k in (5, 15, 25):
        result = interpolative_decomposition(Z, k)
        assert np.all(np.isfinite(result.coef))
        assert reconstruction_error(Z, result) <= result.errors[k] / np.linalg.norm(Z) * np.sqrt(30)


def test_weights_steer_the_pivots(rng):
    Z = well_separated(rng, n=10)
    plain = interpolative_decomposition(Z, 3)
    weights = np.ones(10)
    weights[9] = 1e6  # make the weakest column the most important
    weighted = interpolative_decomposition(Z, 3, weights=weights)
    assert plain.idx[0] == 0 and weighted.idx[0] == 9
    np.testing.assert_array_equal(weighted.coef[:, weighted.idx], np.eye(3))
    # weights choose columns; the fit is the unweighted least squares on them
    fit, *_ = np.linalg.lstsq(Z[:, weighted.idx], Z, rcond=None)
    np.testing.assert_allclose(weighted.coef, fit, atol=1e-8)


def test_weights_equal_column_rescaling(rng):
    Z = rng.standard_normal((60, 8))
    w = rng.uniform(0.5, 2.0, 8)
    a = interpolative_decomposition(Z, 4, weights=w)
    b = interpolative_decomposition(Z * w, 4)
    np.testing.assert_array_equal(a.idx, b.idx)
    np.testing.assert_allclose(a.errors, b.errors)


def test_zero_weights_still_fit(rng):
    Z = rng.standard_normal((60, 8))
    w = np.ones(8)
    w[[2, 5]] = 0.0
    result = interpolative_decomposition(Z, 5, weights=w)
    assert not {2, 5} & set(result.idx.tolist())
    fit, *_ = np.linalg.lstsq(Z[:, result.idx], Z, rcond=None)
    np.testing.assert_allclose(result.coef, fit, atol=1e-10)


def test_ridge_shrinks_towards_zero(rng):
    Z = low_rank_plus_noise(rng, 100, 20, rank=5, noise=0.1)
    exact = interpolative_decomposition(Z, 8)
    tiny = interpolative_decomposition(Z, 8, ridge=1e-12)
    big = interpolative_decomposition(Z, 8, ridge=10.0)
    np.testing.assert_allclose(tiny.coef, exact.coef, atol=1e-6)
    rest = np.setdiff1d(np.arange(20), exact.idx)
    assert np.linalg.norm(big.coef[:, rest]) < np.linalg.norm(exact.coef[:, rest])
    assert reconstruction_error(Z, big) > reconstruction_error(Z, exact)


def test_ridge_least_squares_normal_equations(rng):
    A, B = rng.standard_normal((40, 5)), rng.standard_normal((40, 3))
    T = ridge_least_squares(A, B, 0.5)
    lam = 0.5 * np.trace(A.T @ A) / 5
    np.testing.assert_allclose((A.T @ A + lam * np.eye(5)) @ T, A.T @ B, atol=1e-10)


@pytest.mark.parametrize(
    "Z, k, weights, message",
    [
        (np.ones(5), 1, None, "2-D"),
        (np.ones((0, 4)), 1, None, "empty"),
        (np.array([[1.0, np.nan]]), 1, None, "NaN"),
        (np.ones((3, 4)), 5, None, "k must lie"),
        (np.ones((3, 4)), -1, None, "k must lie"),
        (np.ones((3, 4)), 2, np.ones(3), "shape"),
        (np.ones((3, 4)), 2, -np.ones(4), "non-negative"),
    ],
)
def test_bad_input(Z, k, weights, message):
    with pytest.raises(ValueError, match=message):
        interpolative_decomposition(Z, k, weights=weights)


@pytest.mark.parametrize("sketch", [gaussian_sketch, countsketch])
def test_sketches_preserve_the_gram(rng, sketch):
    Z = rng.standard_normal((4000, 10))
    SZ = sketch(Z, 2000, rng=1)
    assert SZ.shape == (2000, 10)
    ratio = np.linalg.norm(SZ @ np.ones(10)) / np.linalg.norm(Z @ np.ones(10))
    assert 0.9 < ratio < 1.1
    np.testing.assert_array_equal(SZ, sketch(Z, 2000, rng=1))  # seeded


@pytest.mark.parametrize("sketch", [gaussian_sketch, countsketch])
def test_sketched_id_is_nearly_as_good(rng, sketch):
    Z = low_rank_plus_noise(rng, 3000, 40, rank=10, noise=1e-2)
    exact = interpolative_decomposition(Z, 10)
    sketched = interpolative_decomposition(sketch(Z, 80, rng=2), 10)
    assert reconstruction_error(Z, sketched) <= 1.5 * reconstruction_error(Z, exact)
