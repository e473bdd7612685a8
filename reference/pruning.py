"""Pruning one module: keep ``k`` units and fold the correction into its output map."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .id import solve_psd


@dataclass(frozen=True)
class ModulePruning:
    """Result of pruning one module (MLP neurons or attention units).

    Attributes
    ----------
    idx : ndarray of int64, shape (k,)
        Kept units in importance order (neurons, or heads / KV groups).
    weight : ndarray, shape (out, k * u)
        The corrected output map restricted to the kept units' columns
        (``u`` columns per unit: 1 for neurons, ``d_h`` or a group's width for heads).
    residuals : ndarray, shape (units + 1,), or None
        Relative output error left when the first ``k`` units of the full
        importance order are kept, ``k = 0..units``: 1 at ``k = 0``, 0 at
        ``k = units``. Drives the per-layer sizes (DESIGN §1.4). None when
        the caller asked for no curve.
    """

    idx: np.ndarray
    weight: np.ndarray
    residuals: np.ndarray | None


def check_order(order, units: int) -> np.ndarray:
    """``order`` as int64 (units,) if it is a permutation of ``0..units-1``, else a ValueError."""
    order = np.asarray(order, dtype=np.int64).reshape(-1)
    if order.size != units or not np.array_equal(np.sort(order), np.arange(units)):
        raise ValueError(f"order must be a permutation of the {units} units, got {order.size} entries")
    return order


FLOOR = 10 * np.finfo(np.float64).eps  # the fast path's least-squares floor, relative to the mean diagonal

RIDGES = (0.0, 1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
"""The relative ridges :func:`gcv_ridge` chooses among (``λ = ridge · trace(Z_Iᵀ Z_I) / k``)."""


@dataclass(frozen=True)
class RidgeChoice:
    """The relative ridge of a correction chosen by generalised cross-validation.

    Attributes
    ----------
    ridge : float
        The candidate of smallest GCV score (the smallest such ridge on ties).
    ridges : ndarray, shape (m,)
        The candidates.
    scores : ndarray, shape (m,)
        ``GCV(λ) = N · RSS(λ) / (N − df(λ))²`` of each (``inf`` where ``df ≥ N``).
    """

    ridge: float
    ridges: np.ndarray
    scores: np.ndarray


def gcv_ridge(Z, W_out, cols, *, ridges=RIDGES) -> RidgeChoice:
    """Relative ridge of the correction on the kept columns ``cols``, by generalised cross-validation.

    The correction predicts the dropped columns' output ``Y = Z_J W_Jᵀ (N, out)``
    from the kept activations ``Z_I (N, k)`` by ridge regression,
    ``B_λ = (Z_Iᵀ Z_I + λ I)⁻¹ Z_Iᵀ Y``; its residual on the calibration tokens
    ``RSS(λ) = ‖Y − Z_I B_λ‖²_F`` falls as ``λ → 0`` whether or not the fit
    carries over to new tokens. GCV (Golub, Heath and Wahba 1979) corrects it by
    the fit's effective degrees of freedom ``df(λ) = trace(Z_I (Z_Iᵀ Z_I + λ)⁻¹ Z_Iᵀ)``:
    ``GCV(λ) = N · RSS(λ) / (N − df(λ))²``, the rotation-invariant form of
    leave-one-out error of a linear smoother. Each output column of ``Y`` shares
    the smoother, so the scores add over them.

    Parameters
    ----------
    Z : array, shape (N, n)
        Activations of the output map's input (padding excluded).
    W_out : array, shape (out, n)
    cols : array of int, shape (k,)
        Kept columns (for attention: every column of the kept units).
    ridges : sequence of float
        Relative ridges ``≥ 0`` to choose from: ``λ = (ridge + 10 ε) · trace(Z_Iᵀ Z_I) / k``,
        with the floor the fast path's corrections put under every ridge (so
        ``ridge = 0`` scores the fit they apply, and a singular block has a score).
    """
    Z = np.asarray(Z, dtype=np.float64)
    W = np.asarray(W_out, dtype=np.float64)
    cols = np.asarray(cols, dtype=np.int64).reshape(-1)
    ridges = np.asarray(ridges, dtype=np.float64).reshape(-1)
    if ridges.size == 0 or np.any(ridges < 0) or not np.all(np.isfinite(ridges)):
        raise ValueError(f"ridges must be a non-empty sequence of finite values >= 0, got {ridges.tolist()}")
    N, n = Z.shape
    if np.unique(cols).size != cols.size or np.any((cols < 0) | (cols >= n)):
        raise ValueError(f"cols must be distinct columns in 0..{n - 1}, got {cols.tolist()[:8]}")
    rest = np.setdiff1d(np.arange(n), cols)
    scores = np.zeros(ridges.size)
    if cols.size and rest.size:
        A, Y = Z[:, cols], Z[:, rest] @ W[:, rest].T  # (N, k), (N, out)
        gram = A.T @ A
        for i, ridge in enumerate(ridges):
            lam = (ridge + FLOOR) * np.trace(gram) / cols.size
            shifted = gram + lam * np.eye(cols.size)
            rss = np.sum((Y - A @ solve_psd(shifted, A.T @ Y)) ** 2)
            df = np.trace(A @ solve_psd(shifted, A.T))  # trace of the hat matrix
            scores[i] = N * rss / (N - df) ** 2 if N - df > 1e-9 * N else np.inf
    best = int(np.argmin(scores))  # the first (smallest) candidate on ties
    return RidgeChoice(float(ridges[best]), ridges, scores)
