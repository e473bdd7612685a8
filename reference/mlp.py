"""MLP neurons (STAT §Method; DESIGN §1.2).

``Z (N, n)`` is the input of the MLP's last linear map ``y = Z W2^T + b2``
(``act(x W1^T + b1)`` in BERT, ``silu(x Wg^T) * (x Wu^T)`` in Llama). An ID of
``Z`` with column weights ``w_j = ||W2[:, j]||`` keeps neurons ``idx``;
``Z ≈ Z[:, idx] T`` gives ``y ≈ Z[:, idx] (W2 T^T)^T``, so the corrected output
map is ``W2' = W2 @ T.T (out, k)``. The rows ``idx`` of ``W1, b1`` (``Wg, Wu``)
are kept; ``b2`` is unchanged.
"""

from __future__ import annotations

import numpy as np

from .id import interpolative_decomposition
from .pruning import ModulePruning


def prune_mlp(Z, W_out, k, *, ridge=0.0) -> ModulePruning:
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

    Returns
    -------
    ModulePruning
        ``weight = W2 @ T.T (out, k)``; ``residuals[k] = ||(Z - Z_I T) D||_F / ||Z D||_F``
        with ``D = diag(||W2[:, j]||)``.
    """
    W_out = np.asarray(W_out, dtype=np.float64)
    weights = np.linalg.norm(W_out, axis=0)  # (n,)
    result = interpolative_decomposition(Z, k, weights=weights, ridge=ridge)
    total = result.residuals[0]
    residuals = result.residuals / total if total > 0 else np.zeros_like(result.residuals)
    return ModulePruning(result.idx, W_out @ result.coef.T, residuals)
