"""Interpolative decomposition by column-pivoted QR (the ground truth).

An interpolative decomposition (ID) of a matrix ``Z (N, n)`` keeps ``k`` of its
columns, ``idx (k,)``, and an interpolation matrix ``coef (k, n)`` with
``coef[:, idx] = I`` such that::

    Z ≈ Z[:, idx] @ coef

STAT (seed 001, "Method") computes it with a column-pivoted QR of the
activations of a module: the kept columns are the first ``k`` pivots and the
coefficients are the least-squares fit of every column on the kept ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg


@dataclass(frozen=True)
class ID:
    """Result of an interpolative decomposition of ``Z (N, n)``.

    Attributes
    ----------
    idx : ndarray of int64, shape (k,)
        Kept columns, in pivot order (most important first).
    coef : ndarray, shape (k, n)
        Interpolation matrix with ``coef[:, idx] = I`` and
        ``Z ≈ Z[:, idx] @ coef``.
    errors : ndarray, shape (min(N, n),)
        ``errors[j] = |R[j, j]|`` of the pivoted QR of ``Z @ diag(weights)``:
        the norm of the residual of the ``j``-th pivot after projecting out the
        ``j`` earlier ones. Non-increasing; ``errors[k]`` bounds what the
        ``k``-column ID leaves out of any single (weighted) column.
    residuals : ndarray, shape (n + 1,)
        ``residuals[k] = ||R[k:, k:]||_F = ||(Z - Z[:, P[:k]] T) D||_F``: the
        weighted Frobenius residual of the ID that keeps the first ``k`` pivots
        (exact least-squares coefficients). Non-increasing, ``residuals[0] =
        ||Z D||_F``, ``residuals[n] = 0``.
    """

    idx: np.ndarray
    coef: np.ndarray
    errors: np.ndarray
    residuals: np.ndarray


def _check_inputs(Z, k, weights):
    Z = np.asarray(Z)
    if Z.ndim != 2:
        raise ValueError(f"Z must be a 2-D array (N, n), got shape {Z.shape}")
    if Z.shape[0] == 0 or Z.shape[1] == 0:
        raise ValueError(f"Z is empty (shape {Z.shape}): need at least one row and one column")
    if not np.all(np.isfinite(Z)):
        raise ValueError("Z contains NaN or Inf")
    n = Z.shape[1]
    k = n if k is None else int(k)
    if not 0 <= k <= n:
        raise ValueError(f"k must lie in [0, n={n}], got {k}")
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (n,):
            raise ValueError(f"weights must have shape (n,) = ({n},), got {weights.shape}")
        if not np.all(np.isfinite(weights)) or np.any(weights < 0):
            raise ValueError("weights must be finite and non-negative")
    return Z, k, weights


def interpolative_decomposition(Z, k=None, *, weights=None, ridge=0.0) -> ID:
    """Interpolative decomposition of ``Z`` by column-pivoted QR.

    With ``D = diag(weights)`` (identity when ``weights`` is None)::

        Z D P = Q R                     (scipy.linalg.qr, pivoting=True)
        idx   = P[:k]
        coef[:, P[k:]] = argmin_T ||Z[:, idx] T - Z[:, P[k:]]||_F (+ ridge)

    The weights only change which columns are kept: the least-squares fit of a
    column on the kept columns does not depend on how columns are scaled, so
    ``coef`` is the unscaled ``D_idx R11^{-1} R12 D_rest^{-1}`` (STAT §Method;
    DESIGN §1.1). A column with weight 0 is never preferred but still gets its
    least-squares coefficients.

    Parameters
    ----------
    Z : array_like, shape (N, n)
        Activations: one row per token, one column per unit.
    k : int, optional
        Columns to keep, ``0 <= k <= n``. ``None`` keeps all ``n`` (the full
        pivot order and error curve).
    weights : array_like, shape (n,), optional
        Non-negative column weights ``w`` (STAT: the norm of the output weights
        each unit feeds).
    ridge : float, default 0
        Relative ridge ``ρ``: the fit solves
        ``(Z_I^T Z_I + λ I) T = Z_I^T Z_J`` with
        ``λ = ρ · trace(Z_I^T Z_I) / k``. ``0`` gives the exact (minimum-norm)
        least-squares coefficients of the pivoted QR.

    Returns
    -------
    ID
        ``idx (k,)``, ``coef (k, n)``, ``errors (min(N, n),)``.
    """
    Z, k, weights = _check_inputs(Z, k, weights)
    N, n = Z.shape
    Zw = Z if weights is None else Z * weights
    R, perm = scipy.linalg.qr(Zw, mode="r", pivoting=True)
    R = R[: min(N, n)]  # (min(N, n), n): the rows below are zero
    errors = np.abs(np.diag(R))
    # ||R[k:, k:]||_F^2 = sum of the squared norms of rows k, k+1, ... of R
    row_norms2 = np.zeros(n)
    row_norms2[: R.shape[0]] = np.sum(R**2, axis=1)
    residuals = np.sqrt(np.append(np.cumsum(row_norms2[::-1])[::-1], 0.0))
    idx = perm[:k].astype(np.int64)
    rest = perm[k:]

    coef = np.zeros((k, n), dtype=np.result_type(Z.dtype, np.float64))
    coef[:, idx] = np.eye(k)
    if k == 0 or rest.size == 0:
        return ID(idx, coef, errors, residuals)
    if ridge > 0:
        coef[:, rest] = ridge_least_squares(Z[:, idx], Z[:, rest], ridge)
    elif weights is None or np.all(weights > 0):
        # R11 T = R12 in the scaled space, solved in the least-squares sense so a
        # rank-deficient R11 (k beyond the rank of Z) still gives the
        # minimum-norm answer; then undo the column scaling.
        fit, *_ = scipy.linalg.lstsq(R[:k, :k], R[:k, k:])
        if weights is not None:
            fit = weights[idx][:, None] * fit / weights[rest][None, :]
        coef[:, rest] = fit
    else:
        coef[:, rest], *_ = scipy.linalg.lstsq(Z[:, idx], Z[:, rest])
    return ID(idx, coef, errors, residuals)


def ridge_least_squares(A, B, ridge):
    """Ridge-regularised least squares ``argmin_T ||A T - B||² + λ||T||²``.

    ``λ = ridge · trace(A^T A) / k`` for ``A (N, k)``, ``B (N, m)``; returns
    ``T (k, m) = (A^T A + λ I)^{-1} A^T B`` (by :func:`solve_psd`).
    """
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    gram = A.T @ A
    lam = ridge * np.trace(gram) / max(A.shape[1], 1)
    return solve_psd(gram + lam * np.eye(A.shape[1]), A.T @ B)


def solve_psd(A, B):
    """``X = A^{-1} B`` for a symmetric positive (semi-)definite ``A (k, k)``, ``B (k, m)``.

    Cholesky (LAPACK ``posv``) when ``A`` is positive definite; otherwise the
    minimum-norm least-squares solution (``gelsd``), so a singular Gram (all-zero
    activations, ``k`` beyond the rank) still gives an answer. The one PSD solve
    of the reference; :func:`statlab.fast.solve_psd` is its twin.
    """
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    try:
        return scipy.linalg.solve(A, B, assume_a="pos")
    except np.linalg.LinAlgError:
        return scipy.linalg.lstsq(A, B, lapack_driver="gelsd")[0]


def reconstruction_error(Z, result: ID) -> float:
    """Relative reconstruction error ``||Z - Z[:, idx] coef||_F / ||Z||_F``.

    Returns 0 for an all-zero ``Z``.
    """
    Z = np.asarray(Z, dtype=np.float64)
    norm = np.linalg.norm(Z)
    if norm == 0:
        return 0.0
    return float(np.linalg.norm(Z - Z[:, result.idx] @ result.coef) / norm)
