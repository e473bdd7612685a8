"""The fast ID against the reference, on invariants (DESIGN §1.1, §5).

Tolerance. The Gram route squares the condition number: in fp64 it cannot see
residuals below about ``√ε64 · ||Z|| ≈ 1.5e-8 · ||Z||``. So the fast path's
relative reconstruction error must be within 1% of the reference's plus
``FLOOR = 1e-7`` (a few times that floor). Pivots must be identical where they
are well separated; elsewhere near-ties may swap and only invariants count.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import statlab.reference as ref
from statlab import fast
from statlab.fast.cholesky import _pivoted_cholesky_lapack, _pivoted_cholesky_loop, default_tolerance

from .conftest import low_rank_plus_noise, with_spectrum

FLOOR = 1e-7


def _matrices():
    rng = np.random.default_rng(1)
    dup = rng.standard_normal((300, 20))
    zeros = rng.standard_normal((300, 24))
    zeros[:, [3, 11, 17]] = 0.0
    return {
        "random": rng.standard_normal((400, 48)),
        "low_rank_plus_noise": low_rank_plus_noise(rng, 500, 64, rank=12),
        "ill_conditioned": with_spectrum(rng, 400, 40, np.logspace(0, -8, 40)),
        "duplicated_columns": np.hstack([dup, dup[:, :8]]),
        "fewer_rows_than_columns": rng.standard_normal((16, 40)),
        "zero_columns": zeros,
        "decaying_with_floor": with_spectrum(rng, 2000, 96, np.maximum(np.exp(-np.arange(96) / 12), 1e-3)),
    }


MATRICES = _matrices()


def as_reference(result: fast.ID) -> ref.ID:
    return ref.ID(*(x.cpu().numpy() for x in (result.idx, result.coef, result.errors, result.residuals)))


@pytest.mark.parametrize("name", MATRICES)
@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 0.9])
def test_gram_route_matches_reference(name, fraction):
    Z = MATRICES[name]
    k = max(1, int(fraction * Z.shape[1]))
    expected = ref.interpolative_decomposition(Z, k)
    got = fast.interpolative_decomposition(torch.as_tensor(Z), k, batch_size=97)
    assert got.idx.shape == (k,) and got.coef.shape == (k, Z.shape[1])
    assert got.errors.shape == expected.errors.shape
    torch.testing.assert_close(got.coef[:, got.idx], torch.eye(k, dtype=torch.float64))
    err_ref = ref.reconstruction_error(Z, expected)
    err_fast = ref.reconstruction_error(Z, as_reference(got))
    assert err_fast <= 1.01 * err_ref + FLOOR, (err_fast, err_ref)
    # the error curve agrees down to the Gram's floor
    scale = expected.errors[0]
    np.testing.assert_allclose(got.errors.numpy(), expected.errors, rtol=1e-3, atol=FLOOR * scale * 10)
    np.testing.assert_allclose(got.residuals.numpy(), expected.residuals, rtol=1e-3, atol=FLOOR * scale * 10)


def test_identical_pivots_when_well_separated():
    rng = np.random.default_rng(2)
    Z = rng.standard_normal((500, 30)) * 1.5 ** -np.arange(30)
    expected = ref.interpolative_decomposition(Z)
    got = fast.interpolative_decomposition(torch.as_tensor(Z))
    np.testing.assert_array_equal(got.idx.numpy(), expected.idx)
    np.testing.assert_allclose(got.coef.numpy(), expected.coef, atol=1e-8)


def test_weighted_columns_match_reference():
    rng = np.random.default_rng(3)
    Z = low_rank_plus_noise(rng, 400, 50, rank=20, noise=0.05)
    w = rng.uniform(0.1, 3.0, 50)
    expected = ref.interpolative_decomposition(Z, 20, weights=w)
    got = fast.interpolative_decomposition(torch.as_tensor(Z), 20, weights=torch.as_tensor(w))
    np.testing.assert_array_equal(got.idx.numpy(), expected.idx)
    np.testing.assert_allclose(got.errors.numpy(), expected.errors, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(got.coef.numpy(), expected.coef, atol=1e-6)


def test_ridge_matches_reference():
    rng = np.random.default_rng(4)
    Z = low_rank_plus_noise(rng, 300, 30, rank=10, noise=0.1)
    expected = ref.interpolative_decomposition(Z, 12, ridge=0.1)
    got = fast.interpolative_decomposition(torch.as_tensor(Z), 12, ridge=0.1)
    np.testing.assert_array_equal(got.idx.numpy(), expected.idx)
    np.testing.assert_allclose(got.coef.numpy(), expected.coef, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("k", [0, 48])
def test_extremes(k):
    Z = torch.as_tensor(MATRICES["random"])
    result = fast.interpolative_decomposition(Z, k)
    assert result.idx.shape == (k,)
    expected = 1.0 if k == 0 else 0.0
    assert fast.reconstruction_error(Z, result) == pytest.approx(expected, abs=1e-12)


def test_reconstruction_error_agrees_with_reference():
    Z = MATRICES["low_rank_plus_noise"]
    result = fast.interpolative_decomposition(torch.as_tensor(Z), 10)
    assert fast.reconstruction_error(torch.as_tensor(Z), result, batch_size=33) == pytest.approx(
        ref.reconstruction_error(Z, as_reference(result)), rel=1e-12
    )


def test_low_precision_inputs_are_cast_on_the_fly():
    Z = torch.as_tensor(MATRICES["decaying_with_floor"]).to(torch.bfloat16)
    Z64 = Z.double().numpy()
    got = fast.interpolative_decomposition(Z, 40)
    expected = ref.interpolative_decomposition(Z64, 40)
    err_fast = ref.reconstruction_error(Z64, as_reference(got))
    assert err_fast <= 1.01 * ref.reconstruction_error(Z64, expected) + FLOOR


def test_fp32_accumulation_has_a_higher_floor():
    """fp32 Grams lose residuals below ~√ε32·||Z||: visible on an ill-conditioned matrix."""
    Z = torch.as_tensor(MATRICES["ill_conditioned"])
    k = 30  # residual of the best 30 columns ~1e-6, below the fp32 floor
    exact = ref.reconstruction_error(Z.numpy(), ref.interpolative_decomposition(Z.numpy(), k))
    fp64 = fast.reconstruction_error(Z, fast.interpolative_decomposition(Z, k))
    fp32 = fast.reconstruction_error(Z, fast.interpolative_decomposition(Z, k, precision="fp32"))
    sqrt_eps32 = torch.finfo(torch.float32).eps ** 0.5
    assert fp64 <= 1.01 * exact + FLOOR
    assert fp32 > 2 * exact  # measurably worse than the reference ...
    assert fp32 <= 10 * sqrt_eps32  # ... but within the documented floor


@pytest.mark.parametrize("kind", ["gaussian", "countsketch"])
def test_sketch_route(kind):
    Z = MATRICES["decaying_with_floor"]
    expected = ref.interpolative_decomposition(Z, 30)
    g = torch.Generator().manual_seed(0)
    got = fast.interpolative_decomposition(torch.as_tensor(Z), 30, method="sketch", sketch=kind, generator=g)
    assert got.errors.shape == (96,)
    err = ref.reconstruction_error(Z, as_reference(got))
    assert err <= 1.5 * ref.reconstruction_error(Z, expected)


def test_sketch_skipped_when_it_would_not_shrink():
    Z = MATRICES["fewer_rows_than_columns"]
    got = fast.interpolative_decomposition(torch.as_tensor(Z), 10, method="sketch")
    expected = ref.interpolative_decomposition(Z, 10)
    np.testing.assert_array_equal(got.idx.numpy(), expected.idx)


def test_qr_method_is_the_reference():
    Z = MATRICES["zero_columns"]
    got = fast.interpolative_decomposition(torch.as_tensor(Z), 12, method="qr")
    expected = ref.interpolative_decomposition(Z, 12)
    np.testing.assert_array_equal(got.idx.numpy(), expected.idx)
    np.testing.assert_allclose(got.coef.numpy(), expected.coef)


def test_streaming_equals_one_shot():
    rng = torch.Generator().manual_seed(5)
    Z = torch.randn(4, 37, 16, generator=rng, dtype=torch.float64)  # (batch, seq, n)
    mask = torch.rand(4, 37, generator=rng) > 0.3
    acc = fast.GramAccumulator(16, name="layer 0 mlp")
    for b in range(4):
        acc.update(Z[b : b + 1].float(), mask[b : b + 1])
    kept = Z[mask]  # (rows, n)
    assert acc.rows == kept.shape[0]
    torch.testing.assert_close(acc.gram, kept.float().double().T @ kept.float().double())
    one_shot = fast.id_from_gram(acc.gram, 6, rows=acc.rows)
    streamed = fast.interpolative_decomposition(kept.float(), 6, batch_size=5)
    torch.testing.assert_close(one_shot.idx, streamed.idx)
    torch.testing.assert_close(one_shot.coef, streamed.coef)


def test_sketch_accumulator_streams():
    g = torch.Generator().manual_seed(0)
    Z = torch.randn(3000, 12, dtype=torch.float64, generator=g)
    acc = fast.SketchAccumulator(12, 600, kind="countsketch", generator=torch.Generator().manual_seed(1))
    for start in range(0, 3000, 700):
        acc.update(Z[start : start + 700])
    x = torch.ones(12, dtype=torch.float64)
    ratio = (acc.sketch @ x).norm() / (Z @ x).norm()
    assert acc.rows == 3000 and 0.85 < float(ratio) < 1.15


def test_non_finite_activations_name_the_source():
    acc = fast.GramAccumulator(4, name="layer 3 mlp")
    with pytest.raises(fast.NonFiniteActivationError, match="layer 3 mlp"):
        acc.update(torch.tensor([[1.0, float("nan"), 0.0, 0.0]]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k": 99}, "k must lie"),
        ({"k": 2, "method": "svd"}, "method must be"),
        ({"k": 2, "precision": "fp8"}, "precision must be"),
        ({"k": 2, "weights": torch.ones(3)}, "shape"),
    ],
)
def test_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fast.interpolative_decomposition(torch.ones(10, 4), **kwargs)


def test_numpy_input_is_refused_with_a_pointer():
    with pytest.raises(TypeError, match="statlab.reference"):
        fast.interpolative_decomposition(np.ones((4, 4)), 2)


def test_device_loop_matches_lapack():
    """The GPU's pivoted Cholesky loop, run on the CPU, against LAPACK dpstrf: order, pivots and factor."""
    rng = np.random.default_rng(6)
    Z = rng.standard_normal((200, 40)) * 1.3 ** -np.arange(40)
    G = torch.as_tensor(Z.T @ Z)
    tol = default_tolerance(G)
    loop, lapack = _pivoted_cholesky_loop(G, tol), _pivoted_cholesky_lapack(G, tol)
    torch.testing.assert_close(loop.perm, lapack.perm)
    torch.testing.assert_close(loop.pivots, lapack.pivots, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(loop.removed, lapack.removed, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(loop.factor, lapack.factor, rtol=1e-7, atol=1e-10)
    assert loop.full_rank and lapack.full_rank


@pytest.mark.parametrize("route", ["lapack", "loop"])
def test_pivoted_factor_reproduces_the_permuted_gram(route):
    """``G[P, P] = L Lᵀ`` with ``L`` lower trapezoidal; a rank-deficient Gram's factor stops at its rank."""
    from statlab.fast.cholesky import pivoted_cholesky_factor

    rng = np.random.default_rng(7)
    for N, n in ((300, 30), (12, 30)):  # full rank; rank 12
        Z = rng.standard_normal((N, n))
        G = torch.as_tensor(Z.T @ Z)
        result = pivoted_cholesky_factor(G) if route == "lapack" else _pivoted_cholesky_loop(G, default_tolerance(G))
        L, P = result.factor, result.perm
        assert torch.equal(L, L.tril())
        torch.testing.assert_close(L @ L.T, G[P][:, P], rtol=1e-10, atol=1e-9 * float(G.diagonal().max()))
        assert result.full_rank == (N >= n)
        assert int((result.pivots > 0).sum()) == min(N, n)
    before = G.clone()
    pivoted_cholesky_factor(G)  # overwrite=False leaves the caller's Gram alone
    assert torch.equal(G, before)


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    N=st.integers(1, 24),
    n=st.integers(1, 10),
)
def test_properties(data, N, n):
    Z = data.draw(arrays(np.float64, (N, n), elements=st.floats(-100, 100, allow_subnormal=False)))
    k = data.draw(st.integers(0, n))
    expected = ref.interpolative_decomposition(Z, k)
    got = fast.interpolative_decomposition(torch.as_tensor(Z), k)
    idx = got.idx.tolist()
    assert len(set(idx)) == k and all(0 <= j < n for j in idx)
    assert torch.equal(got.coef[:, got.idx], torch.eye(k, dtype=torch.float64))
    assert torch.isfinite(got.coef).all()
    errors = got.errors.numpy()
    assert errors.shape == (min(N, n),) and np.all(errors >= 0)
    assert np.all(np.diff(errors) <= 1e-9 * max(errors[0], 1.0))
    err_fast = ref.reconstruction_error(Z, as_reference(got))
    assert err_fast <= 1.01 * ref.reconstruction_error(Z, expected) + FLOOR


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["gram", "sketch"])
def test_cuda_matches_cpu(method):
    Z = torch.as_tensor(MATRICES["decaying_with_floor"])
    cpu = fast.interpolative_decomposition(Z, 40, method=method, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator(device="cuda").manual_seed(0)
    gpu = fast.interpolative_decomposition(Z.cuda(), 40, method=method, generator=gen)
    assert gpu.idx.device.type == "cuda"
    err_cpu = fast.reconstruction_error(Z, cpu)
    err_gpu = fast.reconstruction_error(Z, fast.ID(*(x.cpu() for x in (gpu.idx, gpu.coef, gpu.errors, gpu.residuals))))
    assert err_gpu <= 1.01 * err_cpu + FLOOR


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_cuda_low_precision_within_floor(precision):
    Z = torch.as_tensor(MATRICES["decaying_with_floor"]).cuda()
    exact = fast.reconstruction_error(Z, fast.interpolative_decomposition(Z, 40))
    low = fast.reconstruction_error(Z, fast.interpolative_decomposition(Z, 40, precision=precision))
    floor = 3e-2 if precision == "tf32" else 10 * torch.finfo(torch.float32).eps ** 0.5
    assert low <= exact + floor


def test_gram_reconstruction_error_matches_direct():
    Z = torch.as_tensor(MATRICES["low_rank_plus_noise"])
    for k in (0, 5, 20, 64):
        result = fast.interpolative_decomposition(Z, k)
        assert fast.gram_reconstruction_error(Z.T @ Z, result) == pytest.approx(
            fast.reconstruction_error(Z, result), rel=1e-6, abs=FLOOR
        )


def test_device_loop_never_syncs_with_the_host():
    """On a GPU a `.item()` per pivot step would stall the device: the loop must not make one."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountSyncs(TorchDispatchMode):
        syncs = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:
                CountSyncs.syncs += 1
            return func(*args, **(kwargs or {}))

    G = torch.as_tensor(MATRICES["random"][:, :12].T @ MATRICES["random"][:, :12])
    with CountSyncs():
        _pivoted_cholesky_loop(G, 1e-12)
    assert CountSyncs.syncs == 0


@pytest.mark.parametrize("N", [400, 25])  # full rank: the factor route; rank 25 < 40: the Gram route
def test_mlp_correction_and_curve_from_the_pivots_factor(N):
    """prune_mlp_from_gram reads its correction and curve off the pivots' factor when the Gram has full
    rank: equal, to rounding, to solving the normal equations and factorising the permuted Gram again,
    and to the reference's QR on the activations."""
    from statlab import reference
    from statlab.fast.id import interpolation_coefficients
    from statlab.fast.mlp import output_residuals_from_gram, prune_mlp_from_gram

    rng = np.random.default_rng(8)
    n = 40
    Z = rng.standard_normal((N, 16)) @ rng.standard_normal((16, n)) + 0.3 * rng.standard_normal((N, n))
    W = rng.standard_normal((12, n)) * rng.uniform(0.2, 2.0, n)
    G, Wt = torch.as_tensor(Z.T @ Z), torch.as_tensor(W)
    for k in (1, 13, 39):
        fast = prune_mlp_from_gram(G, Wt, k)
        normal = Wt @ interpolation_coefficients(G, fast.idx).T
        curve = output_residuals_from_gram(G, Wt, prune_mlp_from_gram(G, Wt, n).idx)
        torch.testing.assert_close(fast.residuals, curve, rtol=1e-9, atol=1e-12)
        if N >= n:
            torch.testing.assert_close(fast.weight, normal, rtol=1e-8, atol=1e-10)
            ref = reference.prune_mlp(Z, W, k)
            np.testing.assert_array_equal(fast.idx.numpy(), ref.idx)
            np.testing.assert_allclose(fast.weight.numpy(), ref.weight, rtol=1e-7, atol=1e-9)
            np.testing.assert_allclose(fast.residuals.numpy(), ref.residuals, rtol=1e-7, atol=1e-9)
        else:
            assert torch.equal(fast.weight, normal)  # the Gram route itself
        ridged = prune_mlp_from_gram(G, Wt, k, ridge=0.1)  # a ridge: the normal equations, as before
        assert torch.equal(ridged.weight, Wt @ interpolation_coefficients(G, ridged.idx, ridge=0.1).T)
