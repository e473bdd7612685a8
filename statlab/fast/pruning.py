"""Pruning one module on torch tensors; mirrors :mod:`statlab.reference.pruning`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from statlab.reference.pruning import FLOOR, RIDGES  # the same candidates and floor on both sides


@dataclass(frozen=True)
class ModulePruning:
    """Result of pruning one module (see :class:`statlab.reference.pruning.ModulePruning`).

    Attributes
    ----------
    idx : Tensor of int64, shape (k,)
    weight : Tensor of float64, shape (out, k * u)
    residuals : Tensor of float64, shape (units + 1,), or None when not asked for
    """

    idx: torch.Tensor
    weight: torch.Tensor
    residuals: torch.Tensor | None


def check_order(order, units: int, device=None) -> torch.Tensor:
    """``order`` as int64 (units,) on ``device`` if it is a permutation of ``0..units-1``, else a ValueError."""
    order = torch.as_tensor(order, dtype=torch.int64, device=device).reshape(-1)
    if order.numel() != units or not torch.equal(order.sort().values, torch.arange(units, device=order.device)):
        raise ValueError(f"order must be a permutation of the {units} units, got {order.numel()} entries")
    return order


@dataclass(frozen=True)
class RidgeChoice:
    """A correction's relative ridge by generalised cross-validation (see :class:`statlab.reference.pruning.RidgeChoice`).

    Attributes
    ----------
    ridge : float
    ridges : Tensor of float64, shape (m,)
    scores : Tensor of float64, shape (m,)
    """

    ridge: float
    ridges: torch.Tensor
    scores: torch.Tensor


def gcv_ridge(Z: torch.Tensor, W_out: torch.Tensor, cols, *, ridges=RIDGES) -> RidgeChoice:
    """:func:`statlab.reference.pruning.gcv_ridge` on ``Z (N, n)``: :func:`gcv_ridge_from_gram` of its Gram."""
    from .gram import gram_matrix

    return gcv_ridge_from_gram(gram_matrix(Z), W_out, cols, Z.shape[0], ridges=ridges)


def gcv_ridge_from_gram(G: torch.Tensor, W_out: torch.Tensor, cols, rows: int, *, ridges=RIDGES) -> RidgeChoice:
    """:func:`gcv_ridge` from the Gram ``G = Zᵀ Z (n, n)`` of ``rows`` tokens, for every candidate at once.

    With ``Z_Iᵀ Z_I = V diag(e) Vᵀ`` and ``C = Vᵀ G_IJ W_Jᵀ (k, out)`` (rows
    ``c_i``): ``df(λ) = Σ e_i / (e_i + λ)`` and
    ``RSS(λ) = trace(W_J G_JJ W_Jᵀ) − Σ ‖c_i‖² (e_i + 2λ) / (e_i + λ)²``, so one
    symmetric eigendecomposition of the kept block serves the whole grid.
    """
    G = G.to(torch.float64)
    W = W_out.detach().to(device=G.device, dtype=torch.float64)
    cols = torch.as_tensor(cols, dtype=torch.int64, device=G.device).reshape(-1)
    grid = torch.as_tensor(ridges, dtype=torch.float64, device=G.device).reshape(-1)
    if grid.numel() == 0 or bool((grid < 0).any()) or not bool(torch.isfinite(grid).all()):
        raise ValueError(f"ridges must be a non-empty sequence of finite values >= 0, got {grid.tolist()}")
    n, N = G.shape[0], int(rows)
    if torch.unique(cols).numel() != cols.numel() or bool(((cols < 0) | (cols >= n)).any()):
        raise ValueError(f"cols must be distinct columns in 0..{n - 1}, got {cols.tolist()[:8]}")
    keep = torch.zeros(n, dtype=torch.bool, device=G.device)
    keep[cols] = True
    rest = torch.nonzero(~keep).reshape(-1)
    scores = torch.zeros_like(grid)
    if cols.numel() and rest.numel():
        G_II = G[cols][:, cols]
        e, V = torch.linalg.eigh(G_II)
        e = e.clamp_min(0)
        W_J = W[:, rest]  # (out, n - k)
        C = V.T @ (G[cols][:, rest] @ W_J.T)  # (k, out)
        c = C.square().sum(dim=1)  # (k,)
        y2 = ((W_J @ G[rest][:, rest]) * W_J).sum()
        lam = (grid[:, None] + FLOOR) * G_II.diagonal().sum() / cols.numel()  # (m, 1)
        shifted = e[None, :] + lam  # (m, k)
        safe = torch.where(shifted > 0, shifted, torch.ones_like(shifted))
        df = torch.where(shifted > 0, e[None, :] / safe, torch.zeros_like(shifted)).sum(dim=1)
        explained = torch.where(shifted > 0, c[None, :] * (e[None, :] + 2 * lam) / safe.square(),
                                torch.zeros_like(shifted)).sum(dim=1)
        rss = (y2 - explained).clamp_min(0)
        free = N - df
        scores = torch.where(free > 1e-9 * N, N * rss / free.clamp_min(1e-300).square(),
                             torch.full_like(rss, torch.inf))
    best = int(torch.argmin(scores))  # the first (smallest) candidate on ties
    return RidgeChoice(float(grid[best]), grid, scores)
