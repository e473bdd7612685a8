"""Attention heads and GQA groups from the context Gram; mirrors :mod:`statlab.reference.heads`.

The reference takes the context ``C (N, d)``; the fast path its Gram
``G = C^T C (d, d)``. Order by greedy pivoted Cholesky of the unit Gram
``H[h, g] = trace(W_h G_hg W_g^T)``; correction ``T = (G_II + λ I)^{-1} G_IJ``,
``W_O[:, I] += W_O[:, J] T^T``; residual after ``k`` units from the Schur
complement ``S = G_JJ - G_JI T``: ``||·||² = trace(W_J S W_J^T)``.
"""

from __future__ import annotations

import torch

from .cholesky import pivoted_cholesky
from .pruning import ModulePruning


def unit_gram(G: torch.Tensor, W_out: torch.Tensor, unit_size: int) -> torch.Tensor:
    """``H[h, g] = trace(W_h G_hg W_g^T)``: shape (units, units)."""
    units = G.shape[0] // unit_size
    K = W_out.T @ W_out  # (d, d)
    return (G * K).reshape(units, unit_size, units, unit_size).sum(dim=(1, 3))


def unit_order(G: torch.Tensor, W_out: torch.Tensor, unit_size: int) -> torch.Tensor:
    """Units in pivoted order of their output contributions: int64 (units,)."""
    perm, _, _ = pivoted_cholesky(unit_gram(G, W_out, unit_size))
    return perm.to(G.device)


def _columns(units: torch.Tensor, unit_size: int) -> torch.Tensor:
    offsets = torch.arange(unit_size, device=units.device)
    return (units[:, None] * unit_size + offsets).reshape(-1)


def _fit(G, I, J, ridge):
    G_II = G[I][:, I]
    lam = (ridge + 10 * torch.finfo(G.dtype).eps) * G_II.diagonal().mean().clamp_min(torch.finfo(G.dtype).tiny)
    A = G_II + lam * torch.eye(I.numel(), dtype=G.dtype, device=G.device)
    chol, info = torch.linalg.cholesky_ex(A)
    if int(info) == 0:
        return torch.cholesky_solve(G[I][:, J], chol)
    return torch.linalg.lstsq(A.cpu(), G[I][:, J].cpu(), driver="gelsd").solution.to(G.device)


def prune_heads(G: torch.Tensor, W_out: torch.Tensor, unit_size: int, k: int, *, ridge: float = 0.0) -> ModulePruning:
    """Keep ``k`` attention units and correct ``W_O``.

    Parameters
    ----------
    G : Tensor, shape (d, d)
        Gram of the attention context (input of ``W_O``).
    W_out : Tensor, shape (out, d)
    unit_size : int
        Columns per unit.
    k : int
    ridge : float

    Returns
    -------
    ModulePruning
        ``weight (out, k * unit_size)`` in fp64, the residual curve over ``k = 0..units``.
    """
    G = G.to(torch.float64)
    W = W_out.detach().to(device=G.device, dtype=torch.float64)
    units = G.shape[0] // unit_size
    if not 0 <= k <= units:
        raise ValueError(f"k must lie in [0, {units}] units, got {k}")
    order = unit_order(G, W, unit_size)
    K = W.T @ W  # (d, d)
    total = (G * K).sum()
    residuals = torch.zeros(units + 1, dtype=torch.float64, device=G.device)
    for j in range(units):
        I, J = _columns(order[:j], unit_size), _columns(order[j:], unit_size)
        S = G[J][:, J]
        if j:
            S = S - G[J][:, I] @ _fit(G, I, J, ridge)
        residuals[j] = (S * K[J][:, J]).sum().clamp_min(0)
    residuals = (residuals / total).sqrt() if total > 0 else residuals
    I, J = _columns(order[:k], unit_size), _columns(order[k:], unit_size)
    weight = W[:, I]
    if k and J.numel():
        weight = weight + W[:, J] @ _fit(G, I, J, ridge).T
    return ModulePruning(order[:k], weight, residuals)
