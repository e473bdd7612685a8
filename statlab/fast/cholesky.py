"""Greedy diagonally pivoted Cholesky: the column pivots of CPQR, from a Gram.

For ``G = A^T A (n, n)`` the greedy pivoted Cholesky picks, at step ``j``, the
column whose residual after projecting out the ``j`` earlier pivots is largest.
Its residual diagonal at the pivot is ``R[j, j]^2`` of the column-pivoted QR
``A P = Q R``, and in exact arithmetic both choose the same pivots (DESIGN §1.1).
There is no pivoted QR on the GPU in torch or cuSOLVER; this is the GPU route.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg.lapack
import torch

from statlab.threads import scipy_blas


def default_tolerance(G: torch.Tensor) -> float:
    """Pivots at or below ``n · ε · max(diag G)`` are rounding noise of the Gram."""
    n = G.shape[0]
    return float(n * torch.finfo(G.dtype).eps * G.diagonal().max().clamp_min(0))


@dataclass(frozen=True)
class PivotedCholesky:
    """A greedy pivoted Cholesky ``G[perm][:, perm] ≈ factor @ factor.T`` (exact when ``rank = n``).

    Attributes
    ----------
    perm : Tensor of int64, shape (n,)
        Pivot order: ``perm[j]`` is the column chosen at step ``j``.
    pivots : Tensor of float64, shape (n,)
        Residual diagonal at each pivot, ``R[j, j]^2`` of the pivoted QR;
        non-increasing; 0 once the remaining residual is below ``tol``.
    factor : Tensor of float64, shape (n, r)
        ``L``, lower trapezoidal, in pivot order: column ``j`` is the Schur
        step of pivot ``j``; ``r >= rank`` (columns past the rank are zero).
        When :attr:`full_rank`, its leading ``(k, k)`` block is the Cholesky
        factor of ``G[perm[:k]][:, perm[:k]]``.
    """

    perm: torch.Tensor
    pivots: torch.Tensor
    factor: torch.Tensor

    @property
    def full_rank(self) -> bool:
        """Every pivot above the tolerance (a host sync on a GPU)."""
        return bool(self.pivots[-1] > 0)

    @property
    def removed(self) -> torch.Tensor:
        """``||L[:, j]||^2 = ||R[j, :]||^2`` for ``j < n`` (0 beyond the rank), shape (n,): how much of
        ``trace(G)`` step ``j`` explains, so ``trace(G) - cumsum(removed)`` is ``||R[k:, k:]||_F^2``."""
        out = self.factor.new_zeros(self.perm.numel())
        out[: self.factor.shape[1]] = self.factor.square().sum(dim=0)
        return out


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
    perm, pivots, removed : Tensors of shape (n,)
        As :class:`PivotedCholesky` (``removed`` its property).
    """
    result = pivoted_cholesky_factor(G, tol)
    return result.perm, result.pivots, result.removed


def pivoted_cholesky_factor(G: torch.Tensor, tol: float | None = None, *, overwrite: bool = False) -> PivotedCholesky:
    """:func:`pivoted_cholesky` with its factor ``L (n, r)``.

    The factor is what the MLP's error curve and correction read
    (:func:`statlab.fast.mlp.prune_mlp_from_gram`): with it neither needs a
    second factorisation. ``overwrite=True`` lets LAPACK factorise an fp64
    CPU ``G`` in place (the caller's scratch copy; its contents are then the factor).

    Notes
    -----
    On the CPU this calls LAPACK ``dpstrf`` (blocked, same greedy rule); on
    other devices a loop of ``n`` rank-one steps on the device,
    ``O(n^3 / 2)`` flops in matrix-vector products.
    """
    if G.ndim != 2 or G.shape[0] != G.shape[1]:
        raise ValueError(f"G must be square, got shape {tuple(G.shape)}")
    if G.dtype != torch.float64:
        G, overwrite = G.to(torch.float64), True  # a copy of our own
    if tol is None:
        tol = default_tolerance(G)
    if G.device.type == "cpu":
        return _pivoted_cholesky_lapack(G, tol, overwrite=overwrite)
    return _pivoted_cholesky_loop(G, tol)


def _pivoted_cholesky_lapack(G: torch.Tensor, tol: float, *, overwrite: bool = False) -> PivotedCholesky:
    n = G.shape[0]
    # G is symmetric, so its transpose (a view) is the Fortran-ordered matrix LAPACK wants: no copy in f2py
    a = G.numpy().T if overwrite and G.is_contiguous() else np.array(G.numpy(), order="F")
    with scipy_blas():
        factor, piv, rank, info = scipy.linalg.lapack.dpstrf(a, tol=tol, lower=1, overwrite_a=1)
    if info < 0:
        raise RuntimeError(f"dpstrf rejected argument {-info}")
    # the lower triangle holds L (n, rank) in pivot order; the strict upper one is G's, and the
    # columns after the rank hold an unfinished Schur complement: drop both
    L = torch.from_numpy(factor)[:, :rank].tril_()
    pivots = torch.zeros(n, dtype=torch.float64)
    pivots[:rank] = L.diagonal().square()
    return PivotedCholesky(torch.from_numpy(piv.astype(np.int64) - 1), pivots, L)


def _pivoted_cholesky_loop(G: torch.Tensor, tol: float) -> PivotedCholesky:
    n = G.shape[0]
    residual = G.diagonal().clone()  # (n,) diagonal of the Schur complement
    L = torch.zeros(n, n, dtype=G.dtype, device=G.device)
    perm = torch.empty(n, dtype=torch.int64, device=G.device)
    pivots = torch.empty(n, dtype=G.dtype, device=G.device)
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
        residual = residual - column.square()
        free.index_fill_(0, p, False)
    return PivotedCholesky(perm, pivots, L[perm])  # rows in pivot order; columns past the rank are zero
