"""Attention heads and GQA groups (STAT §Method; DESIGN §1.3).

The context ``C (N, d)`` is the input of the output map ``W_O (out, d)``; a
*unit* owns ``u`` consecutive columns (a head, ``u = d_h``; or a whole KV
group, ``u = d_h · heads per group``). With ``W_h = W_O[:, h-block]`` the
output is ``Σ_h C_h W_h^T``.

Order: pivoted QR over units of the per-unit outputs ``vec(C_h W_h^T)``, whose
Gram is ``H[h, g] = trace(W_h G_hg W_g^T)`` with ``G = C^T C``; the pivots of any
``A`` with ``A^T A = H`` are the same, so we factor ``H``.
Correction: block least squares of the dropped coordinates on the kept ones,
``T = argmin ||C_J - C_I T||`` (``= G_II^{-1} G_IJ``), then
``W_O[:, I] += W_O[:, J] @ T.T`` and drop ``J``.
Error after ``k`` units: ``||(C_J - C_I T) W_J^T||_F / ||C W_O^T||_F``, read off
:func:`~statlab.reference.mlp.output_residuals` at unit boundaries.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from .id import ridge_least_squares
from .mlp import output_residuals
from .pruning import ModulePruning, check_order


def unit_gram(G, W_out, unit_size):
    """``H[h, g] = trace(W_h G_hg W_g^T)`` for ``G (d, d)``, ``W_out (out, d)``: shape (units, units)."""
    d = G.shape[0]
    units = d // unit_size
    K = W_out.T @ W_out  # (d, d)
    return (G * K).reshape(units, unit_size, units, unit_size).sum(axis=(1, 3))


def unit_order(G, W_out, unit_size):
    """Units in pivoted-QR order of their output contributions: int64 (units,)."""
    H = unit_gram(G, W_out, unit_size)
    eigvals, eigvecs = np.linalg.eigh(H)
    A = np.sqrt(np.clip(eigvals, 0, None))[:, None] * eigvecs.T  # A^T A = H
    _, _, perm = scipy.linalg.qr(A, pivoting=True)
    return perm.astype(np.int64)


def _columns(units, unit_size):
    return (np.asarray(units)[:, None] * unit_size + np.arange(unit_size)).reshape(-1)


def _fit(C, I, J, ridge):
    if ridge > 0:
        return ridge_least_squares(C[:, I], C[:, J], ridge)
    T, *_ = scipy.linalg.lstsq(C[:, I], C[:, J])
    return T


def prune_heads(C, W_out, unit_size, k, *, ridge=0.0, curve=True, order=None) -> ModulePruning:
    """Keep ``k`` attention units and correct ``W_O``.

    Parameters
    ----------
    C : array_like, shape (N, d)
        Attention context (input of ``W_O``), padding excluded.
    W_out : array_like, shape (out, d)
    unit_size : int
        Columns per unit (``d_h``, or ``d_h`` times query heads per KV group).
    k : int
        Units to keep.
    ridge : float
    curve : bool
        Compute the error curve (``residuals``; None otherwise).
    order : array_like of int, shape (units,), optional
        A unit order to use instead of the pivots': the full order of these
        same data and ``W_out`` from an earlier call (its ``idx`` at ``k =
        units``; the result is then the same, the pivoting skipped), or any
        permutation of the units, e.g. :func:`~statlab.reference.heads.group_rounds`
        of it. The first ``k`` are kept and the curve runs along it.

    Returns
    -------
    ModulePruning
        ``weight (out, k * unit_size)`` = ``W_I + W_J T^T``, the residual curve
        over ``k = 0..units``.
    """
    C = np.asarray(C, dtype=np.float64)
    W_out = np.asarray(W_out, dtype=np.float64)
    units = C.shape[1] // unit_size
    if not 0 <= k <= units:
        raise ValueError(f"k must lie in [0, {units}] units, got {k}")
    order = check_order(unit_order(C.T @ C, W_out, unit_size) if order is None else order, units)
    residuals = output_residuals(C, W_out, _columns(order, unit_size))[::unit_size] if curve else None
    I, J = _columns(order[:k], unit_size), _columns(order[k:], unit_size)
    weight = W_out[:, I]
    if k and J.size:
        weight = weight + W_out[:, J] @ _fit(C, I, J, ridge).T
    return ModulePruning(order[:k], weight, residuals)


def group_rounds(order, groups):
    """Query heads of a GQA layer in rounds that keep every KV group alike.

    Head ``h`` of ``H = groups · r`` belongs to group ``h // r`` (the query heads
    reading one KV head are consecutive). Round ``j`` takes each group's
    ``j``-th head in ``order``; the rounds follow one another, and within a round
    the heads keep their places in ``order``. The first ``m · groups`` entries
    are then the ``m`` best heads of every group by ``order``, so a layer that
    keeps them keeps ``m`` query heads per KV head.

    Parameters
    ----------
    order : array_like of int, shape (H,)
        A permutation of the query heads, most important first (the pivots).
    groups : int
        KV groups, dividing ``H``.

    Returns
    -------
    ndarray of int64, shape (H,)
    """
    order = np.asarray(order, dtype=np.int64).reshape(-1)
    if groups < 1 or order.size % groups or not np.array_equal(np.sort(order), np.arange(order.size)):
        raise ValueError(f"order must be a permutation of heads that {groups} groups divide, got {order.size} entries")
    group = order // (order.size // groups)
    rank = np.empty_like(order)  # rank[i]: how many heads of order[i]'s group come before it
    seen = np.zeros(groups, dtype=np.int64)
    for i, g in enumerate(group):
        rank[i], seen[g] = seen[g], seen[g] + 1
    return order[np.lexsort((np.arange(order.size), rank))]
