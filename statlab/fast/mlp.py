"""MLP neurons on torch tensors; mirrors :mod:`statlab.reference.mlp`.

:func:`prune_mlp` and :func:`output_residuals` take the activations
``Z (N, n)``, as the reference does; their Gram entry points
:func:`prune_mlp_from_gram` and :func:`output_residuals_from_gram` take
``G = Z^T Z (n, n)`` from a :class:`~statlab.fast.GramAccumulator` (what the
driver captures: ``N`` is never materialised). The formula is the same:
weighted ID with ``w_j = ||W2[:, j]||``, ``W2' = W2 @ T.T``.
"""

from __future__ import annotations

import torch

from .gram import gram_matrix
from .id import interpolation_coefficients, weighted_factor
from .pruning import ModulePruning, check_order


def prune_mlp(Z: torch.Tensor, W_out: torch.Tensor, k: int, *, ridge: float = 0.0, curve: bool = True,
              order: torch.Tensor | None = None) -> ModulePruning:
    """Keep ``k`` neurons and correct the output map: :func:`prune_mlp_from_gram` of ``Z^T Z``.

    ``Z (N, n)`` are the input activations of the output map, padding
    excluded; their fp64 Gram is streamed (:func:`~statlab.fast.gram.gram_matrix`).
    The other parameters and the result are those of :func:`prune_mlp_from_gram`.
    """
    return prune_mlp_from_gram(gram_matrix(Z), W_out, k, ridge=ridge, curve=curve, order=order)


def prune_mlp_from_gram(G: torch.Tensor, W_out: torch.Tensor, k: int, *, ridge: float = 0.0,
                        curve: bool = True, order: torch.Tensor | None = None) -> ModulePruning:
    """Keep ``k`` neurons and correct the output map, from the Gram of the activations alone.

    Parameters
    ----------
    G : Tensor, shape (n, n)
        Gram ``Z^T Z`` of the output map's input activations.
    W_out : Tensor, shape (out, n)
    k : int
    ridge : float
    curve : bool
        Compute the error curve (``residuals``; None otherwise).
    order : Tensor of int64, shape (n,), optional
        The full pivot order of these same activations and ``W_out`` from an
        earlier call (its ``idx`` at ``k = n``): the pivoting is skipped, the
        kept neurons are the same, and the correction and curve agree to
        rounding (they come from the normal equations and a Cholesky of the
        permuted Gram, not from the pivots' factor).

    Returns
    -------
    ModulePruning
        ``weight = W2 @ T.T (out, k)`` in fp64 and the relative output error
        curve over ``k = 0..n`` (see :func:`output_residuals_from_gram`).
    """
    G = G.to(torch.float64)  # once, for the pivots, the coefficients and the curve
    W_out = W_out.detach().to(device=G.device, dtype=torch.float64)
    weights = W_out.norm(dim=0)  # (n,)
    if not 0 <= k <= G.shape[0]:
        raise ValueError(f"k must lie in [0, n={G.shape[0]}], got {k}")
    chol = None
    if order is None:
        chol = weighted_factor(G, weights)  # D G D = L Lᵀ in pivot order
        order = chol.perm
        if not chol.full_rank:
            chol = None  # the factor stops at the rank: the Gram routes below stay exact
    order = check_order(order, G.shape[0], G.device)
    idx = order[:k]
    if k == G.shape[0]:  # every neuron kept (the sizes' curves): T is the permutation, W2 @ T.T exactly W2[:, idx]
        weight = W_out[:, idx]
    elif chol is not None and ridge == 0 and k > 0:
        weight = _corrected_from_factor(W_out, weights, order, chol.factor, k)
    else:
        weight = W_out @ interpolation_coefficients(G, idx, ridge=ridge, eps=torch.finfo(G.dtype).eps).T
    if not curve:
        residuals = None
    elif chol is not None:
        residuals = _tail_curve(_unit_columns(W_out, weights, order) @ chol.factor)
    else:
        residuals = output_residuals_from_gram(G, W_out, order)
    return ModulePruning(idx, weight, residuals)


def _unit_columns(W_out: torch.Tensor, weights: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """``W_out[:, order] D_order⁻¹ (out, n)``: the columns of ``W2`` in pivot order, each of norm 1."""
    return W_out[:, order] / weights[order]


def _corrected_from_factor(W_out, weights, order, L, k):
    """``W2' = W_I + W_J Tᵀ (out, k)`` from the pivoted Cholesky ``D G D [P, P] = L Lᵀ`` of the sizes' ID.

    With ``I = P[:k]``, ``J = P[k:]`` and ``L = [[L11, 0], [L21, L22]]``,
    ``G_II = D_I⁻¹ L11 L11ᵀ D_I⁻¹`` and ``G_JI = D_J⁻¹ L21 L11ᵀ D_I⁻¹``, so the
    least-squares coefficients are ``T = G_II⁻¹ G_IJ = D_I L11⁻ᵀ L21ᵀ D_J⁻¹``
    and ``W_J Tᵀ = (W_J D_J⁻¹) L21 L11⁻¹ D_I``: one ``(out, n−k) × (n−k, k)``
    product and one triangular solve, no second factorisation. This is the
    reference's ``R11⁻¹ R12`` (``R = Lᵀ`` up to the column scaling).
    """
    idx = order[:k]
    M = _unit_columns(W_out, weights, order[k:]) @ L[k:, :k]  # (out, k)
    fit = torch.linalg.solve_triangular(L[:k, :k], M, upper=False, left=False)  # M L11⁻¹
    return W_out[:, idx] + fit * weights[idx]


def _tail_curve(WL: torch.Tensor) -> torch.Tensor:
    """``sqrt(Σ_{j >= k} ||WL[:, j]||² / Σ_j ||WL[:, j]||²)`` for ``k = 0..n``, shape (n + 1,)."""
    parts = WL.square().sum(dim=0)  # (n,)
    tail = torch.cat([parts.flip(0).cumsum(0).flip(0), parts.new_zeros(1)])  # (n + 1,)
    return (tail / tail[0]).sqrt() if tail[0] > 0 else torch.zeros_like(tail)


def output_residuals(Z: torch.Tensor, W_out: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Relative output error ``||(Z - Z_I T) W^T||_F / ||Z W^T||_F`` for ``I = order[:k]``, all ``k``.

    ``Z (N, n)``; as :func:`output_residuals_from_gram` of ``Z^T Z``. Shape (n + 1,).
    """
    return output_residuals_from_gram(gram_matrix(Z), W_out, order)


def output_residuals_from_gram(G: torch.Tensor, W_out: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """:func:`output_residuals` from the Gram ``G = Z^T Z (n, n)``.

    With the Cholesky ``G[order][:, order] = L L^T``, the residual Gram of the
    columns after the first ``k`` is ``L[k:, k:] L[k:, k:]^T``, so the squared
    output residual is ``Σ_{j >= k} ||(W[:, order] L)[:, j]||²``: one product
    and a reverse cumulative sum give the whole curve, shape (n + 1,).
    """
    G = G.to(torch.float64)
    W = W_out.to(device=G.device, dtype=torch.float64)[:, order]  # (out, n)
    G = G[order[:, None], order[None, :]]  # one gather, a copy: its diagonal takes the jitter in place (no eye)
    jitter = 10 * torch.finfo(torch.float64).eps * G.diagonal().mean().clamp_min(torch.finfo(torch.float64).tiny)
    G.diagonal().add_(jitter)
    L, _ = torch.linalg.cholesky_ex(G)
    return _tail_curve(W @ L)
