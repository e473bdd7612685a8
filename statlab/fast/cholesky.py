"""Greedy diagonally pivoted Cholesky: the column pivots of CPQR, from a Gram.

For ``G = A^T A (n, n)`` the greedy pivoted Cholesky picks, at step ``j``, the
column whose residual after projecting out the ``j`` earlier pivots is largest.
Its residual diagonal at the pivot is ``R[j, j]^2`` of the column-pivoted QR
``A P = Q R``, and in exact arithmetic both choose the same pivots (DESIGN §1.1).
There is no pivoted QR on the GPU in torch or cuSOLVER; this is the GPU route.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg.lapack
import torch

from statlab.threads import scipy_blas


def default_tolerance(G: torch.Tensor) -> float:
    """Pivots at or below ``n · ε · max(diag G)`` are rounding noise of the Gram."""
    n = G.shape[0]
    return float(n * torch.finfo(G.dtype).eps * G.diagonal().max().clamp_min(0))


def pivoted_cholesky(G: torch.Tensor, tol: float | None = None):
    """Full greedy pivot order of a symmetric positive semi-definite ``G``.

    Parameters
    ----------
    G : Tensor, shape (n, n)
        Symmetric PSD (a Gram ``Z^T Z``), factorised in fp64.
    tol : float, optional
        Pivots ``<= tol`` count as zero; default :func:`default_tolerance`.

    Returns
    -------
    perm : Tensor of int64, shape (n,)
        Pivot order: ``perm[j]`` is the column chosen at step ``j``.
    pivots : Tensor of float64, shape (n,)
        Residual diagonal at each pivot, ``R[j, j]^2`` of the pivoted QR;
        non-increasing; 0 once the remaining residual is below ``tol``.
    removed : Tensor of float64, shape (n,)
        ``||L[:, j]||^2 = ||R[j, :]||^2``: how much of ``trace(G)`` step ``j``
        explains, so ``trace(G) - cumsum(removed)`` is ``||R[k:, k:]||_F^2``.

    Notes
    -----
    On the CPU this calls LAPACK ``dpstrf`` (blocked, same greedy rule); on
    other devices a loop of ``n`` rank-one steps on the device,
    ``O(n^3 / 2)`` flops in matrix-vector products.
    """
    if G.ndim != 2 or G.shape[0] != G.shape[1]:
        raise ValueError(f"G must be square, got shape {tuple(G.shape)}")
    G = G.to(torch.float64)
    if tol is None:
        tol = default_tolerance(G)
    if G.device.type == "cpu":
        return _pivoted_cholesky_lapack(G, tol)
    return _pivoted_cholesky_loop(G, tol)


def _pivoted_cholesky_lapack(G: torch.Tensor, tol: float):
    n = G.shape[0]
    with scipy_blas():
        factor, piv, rank, info = scipy.linalg.lapack.dpstrf(G.numpy(), tol=tol, lower=1)
    if info < 0:
        raise RuntimeError(f"dpstrf rejected argument {-info}")
    # the lower triangle holds L (n, rank) in pivot order; the strict upper one is G's
    pivots = np.zeros(n)
    pivots[:rank] = np.diag(factor)[:rank] ** 2
    removed = np.zeros(n)
    removed[:rank] = _lower_column_squares(factor, rank)
    return tuple(torch.from_numpy(x) for x in (piv.astype(np.int64) - 1, pivots, removed))


def _pivoted_cholesky_loop(G: torch.Tensor, tol: float):
    n = G.shape[0]
    residual = G.diagonal().clone()  # (n,) diagonal of the Schur complement
    L = torch.zeros(n, n, dtype=G.dtype, device=G.device)
    perm = torch.empty(n, dtype=torch.int64, device=G.device)
    pivots = torch.empty(n, dtype=G.dtype, device=G.device)
    removed = torch.empty(n, dtype=G.dtype, device=G.device)
    free = torch.ones(n, dtype=torch.bool, device=G.device)
    neg_inf = torch.tensor(-torch.inf, dtype=G.dtype, device=G.device)
    for j in range(n):
        # index with 1-element tensors (index_select / index_fill_) so that no step
        # turns the pivot into a Python int: a host sync per step on a GPU
        candidates = torch.where(free, residual, neg_inf)
        p = torch.argmax(candidates).reshape(1)
        value = candidates.index_select(0, p)  # (1,)
        keep = value > tol
        perm[j : j + 1] = p
        pivots[j : j + 1] = torch.where(keep, value, 0.0)
        column = G.index_select(1, p)[:, 0] - L[:, :j] @ L.index_select(0, p)[0, :j]  # (n,)
        column = torch.where(keep & free, column * value.clamp_min(tol).rsqrt(), 0.0)
        L[:, j] = column
        removed[j : j + 1] = column.square().sum()
        residual = residual - column.square()
        free.index_fill_(0, p, False)
    return perm, pivots, removed


def _lower_column_squares(a: np.ndarray, cols: int) -> np.ndarray:
    """``Σ_{i>=j} a[i, j]²`` for the first ``cols`` columns, row block by row block (no n×n copy)."""
    out = np.zeros(cols)
    for start in range(0, a.shape[0], 512):
        block = a[start : start + 512, :cols] ** 2  # (b, cols)
        rows = np.arange(start, start + block.shape[0])[:, None]
        out += np.where(rows >= np.arange(cols)[None, :], block, 0.0).sum(axis=0)
    return out
