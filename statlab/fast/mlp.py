"""MLP neurons from a streamed Gram; mirrors :mod:`statlab.reference.mlp`.

The reference takes the activations ``Z (N, n)``; the fast path takes their Gram
``G = Z^T Z (n, n)`` from a :class:`~statlab.fast.GramAccumulator`. The formula
is the same: weighted ID with ``w_j = ||W2[:, j]||``, ``W2' = W2 @ T.T``.
"""

from __future__ import annotations

import torch

from .id import id_from_gram
from .pruning import ModulePruning


def prune_mlp(G: torch.Tensor, W_out: torch.Tensor, k: int, *, ridge: float = 0.0) -> ModulePruning:
    """Keep ``k`` neurons and correct the output map.

    Parameters
    ----------
    G : Tensor, shape (n, n)
        Gram of the output map's input activations.
    W_out : Tensor, shape (out, n)
    k : int
    ridge : float

    Returns
    -------
    ModulePruning
        ``weight = W2 @ T.T (out, k)`` in fp64 and the weighted residual curve.
    """
    W_out = W_out.detach().to(device=G.device, dtype=torch.float64)
    weights = W_out.norm(dim=0)  # (n,)
    result = id_from_gram(G, k, weights=weights, ridge=ridge)
    total = result.residuals[0]
    residuals = result.residuals / total if total > 0 else torch.zeros_like(result.residuals)
    return ModulePruning(result.idx, W_out @ result.coef.T, residuals)
