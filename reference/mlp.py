"""MLP neurons (STAT §Method; DESIGN §1.2).

``Z (N, n)`` is the input of the MLP's last linear map ``y = Z W2^T + b2``
(``act(x W1^T + b1)`` in BERT, ``silu(x Wg^T) * (x Wu^T)`` in Llama). An ID of
``Z`` with column weights ``w_j = ||W2[:, j]||`` keeps neurons ``idx``;
``Z ≈ Z[:, idx] T`` gives ``y ≈ Z[:, idx] (W2 T^T)^T``, so the corrected output
map is ``W2' = W2 @ T.T (out, k)``. One pivoted QR gives the order; one plain QR
of the ordered columns gives both ``T`` and the error curve for every ``k``. The rows ``idx`` of ``W1, b1`` (``Wg, Wu``)
are kept; ``b2`` is unchanged.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from .id import interpolative_decomposition, ridge_least_squares
from .pruning import ModulePruning, check_order


def prune_mlp(Z, W_out, k, *, ridge=0.0, curve=True, order=None) -> ModulePruning:
    """Keep ``k`` neurons of an MLP and correct its output map.

    Parameters
    ----------
    Z : array_like, shape (N, n)
        Input activations of the output map, padding excluded.
    W_out : array_like, shape (out, n)
        The output map ``W2``.
    k : int
        Neurons to keep, ``0 <= k <= n``.
    ridge : float
        Relative ridge of the least-squares correction (see ``interpolative_decomposition``).
    curve : bool
        Compute the error curve (``residuals``; None otherwise).
    order : array_like of int, shape (n,), optional
        The full pivot order of these same activations and ``W_out`` from an
        earlier call (its ``idx`` at ``k = n``): the pivoting is skipped and
        the result is the same.

    Returns
    -------
    ModulePruning
        ``weight = W2 @ T.T (out, k)``; ``residuals`` the relative output error
        curve over ``k = 0..n`` (see :func:`output_residuals`).
    """
    Z = np.asarray(Z, dtype=np.float64)
    W_out = np.asarray(W_out, dtype=np.float64)
    weights = np.linalg.norm(W_out, axis=0)  # (n,)
    if not 0 <= k <= Z.shape[1]:
        raise ValueError(f"k must lie in [0, n={Z.shape[1]}], got {k}")
    if order is None:
        order = interpolative_decomposition(Z, None, weights=weights).idx  # full pivot order, (n,)
    order = check_order(order, Z.shape[1])
    idx, rest = order[:k], order[k:]
    weight = W_out[:, idx]
    if k and rest.size:
        if ridge > 0:
            T = ridge_least_squares(Z[:, idx], Z[:, rest], ridge)
        else:  # least squares through the QR of the ordered columns (minimum norm if rank-deficient)
            R = _ordered_r(Z, order)
            T, *_ = scipy.linalg.lstsq(R[:k, :k], R[:k, k:])
        weight = weight + W_out[:, rest] @ T.T
    return ModulePruning(idx, weight, output_residuals(Z, W_out, order) if curve else None)


def _ordered_r(Z, order):
    """``R (n, n)`` of the QR ``Z[:, order] = Q R``, zero rows added when ``N < n``."""
    R = scipy.linalg.qr(Z[:, order], mode="r")[0][: min(Z.shape)]
    return np.vstack([R, np.zeros((Z.shape[1] - R.shape[0], Z.shape[1]))])


def output_residuals(Z, W_out, order):
    """Relative output error ``||(Z - Z_I T) W^T||_F / ||Z W^T||_F`` for ``I = order[:k]``, all ``k``.

    With the QR ``Z[:, order] = Q R``, the part of column ``j`` not explained by
    the columns before it is ``Q[:, j] R[j, j:]``; so the squared output residual
    of keeping the first ``k`` is ``Σ_{j >= k} ||(W[:, order] R^T)[:, j]||²``.
    Returns shape (n + 1,).
    """
    Z = np.asarray(Z, dtype=np.float64)
    W = np.asarray(W_out, dtype=np.float64)[:, order]
    parts = np.sum((W @ _ordered_r(Z, order).T) ** 2, axis=0)  # (n,)
    tail = np.append(np.cumsum(parts[::-1])[::-1], 0.0)
    return np.sqrt(tail / tail[0]) if tail[0] > 0 else np.zeros_like(tail)
