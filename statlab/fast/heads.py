"""Attention heads and GQA groups on torch tensors; mirrors :mod:`statlab.reference.heads`.

:func:`prune_heads` takes the context ``C (N, d)``, as the reference does;
its Gram entry point :func:`prune_heads_from_gram` takes ``G = C^T C (d, d)``
(what the driver captures). :func:`unit_gram` and :func:`unit_order` take the
context Gram on both sides. Order by greedy pivoted Cholesky of the unit Gram
``H[h, g] = trace(W_h G_hg W_g^T)``; correction ``T = (G_II + λ I)^{-1} G_IJ``,
``W_O[:, I] += W_O[:, J] T^T``; the residual curve is the MLP's
:func:`~statlab.fast.mlp.output_residuals_from_gram` over the units' columns in order,
read at every unit boundary.
"""

from __future__ import annotations

import torch

from .cholesky import pivoted_cholesky
from .gram import gram_matrix
from .id import interpolation_coefficients
from .mlp import output_residuals_from_gram
from .pruning import ModulePruning, check_order


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


def prune_heads(C: torch.Tensor, W_out: torch.Tensor, unit_size: int, k: int, *, ridge: float = 0.0,
                curve: bool = True, order: torch.Tensor | None = None) -> ModulePruning:
    """Keep ``k`` attention units and correct ``W_O``: :func:`prune_heads_from_gram` of ``C^T C``.

    ``C (N, d)`` is the attention context (input of ``W_O``), padding excluded;
    its fp64 Gram is streamed (:func:`~statlab.fast.gram.gram_matrix`). The
    other parameters and the result are those of :func:`prune_heads_from_gram`.
    """
    return prune_heads_from_gram(gram_matrix(C), W_out, unit_size, k, ridge=ridge, curve=curve, order=order)


def prune_heads_from_gram(G: torch.Tensor, W_out: torch.Tensor, unit_size: int, k: int, *, ridge: float = 0.0,
                          curve: bool = True, order: torch.Tensor | None = None) -> ModulePruning:
    """Keep ``k`` attention units and correct ``W_O``, from the context Gram alone.

    Parameters
    ----------
    G : Tensor, shape (d, d)
        Gram of the attention context (input of ``W_O``).
    W_out : Tensor, shape (out, d)
    unit_size : int
        Columns per unit.
    k : int
    ridge : float
    curve : bool
        Compute the error curve (``residuals``; None otherwise).
    order : Tensor of int64, shape (units,), optional
        A unit order to use instead of the pivots': the full order of these
        same data and ``W_out`` from an earlier call (its ``idx`` at ``k =
        units``; the result is then the same, the pivoting skipped), or any
        permutation of the units, e.g. :func:`~statlab.reference.heads.group_rounds`
        of it. The first ``k`` are kept and the curve runs along it.

    Returns
    -------
    ModulePruning
        ``weight (out, k * unit_size)`` in fp64; the relative output error
        curve over ``k = 0..units`` (exact least squares, no ridge).
    """
    G = G.to(torch.float64)
    W = W_out.detach().to(device=G.device, dtype=torch.float64)
    units = G.shape[0] // unit_size
    if not 0 <= k <= units:
        raise ValueError(f"k must lie in [0, {units}] units, got {k}")
    order = check_order(unit_order(G, W, unit_size) if order is None else order, units, G.device)
    columns = _columns(order, unit_size)
    residuals = output_residuals_from_gram(G, W, columns)[::unit_size] if curve else None  # (units + 1,)
    I, J = _columns(order[:k], unit_size), _columns(order[k:], unit_size)
    weight = W[:, I]
    if k and J.numel():
        weight = weight + W[:, J] @ interpolation_coefficients(G, I, ridge=ridge)[:, J].T
    return ModulePruning(order[:k], weight, residuals)
