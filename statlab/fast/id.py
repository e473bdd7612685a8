"""Interpolative decomposition on torch tensors; mirrors :mod:`statlab.reference.id`.

Same function, arguments and result fields as the reference, computed three ways:

``method="gram"`` (default)
    Stream ``G = Z^T Z (n, n)`` in fp64 (batches cast on the fly; ``N × n`` is
    never copied), scale ``D G D``, greedy pivoted Cholesky in fp64 (the CPQR
    pivots; its pivot values are ``R[j, j]^2``), then the ridge-regularised
    normal equations ``coef[:, J] = (G_II + λ I)^{-1} G_IJ``. ``O(N n^2)`` in one
    GEMM-shaped pass plus ``O(n^3)`` for the pivots: fast on CPUs and GPUs.
    Accuracy floor: the Gram squares the condition number, so residuals below
    about ``√ε · ||Z||`` of the accumulation type are lost: ``1.5e-8`` for fp64
    (default), ``3.5e-4`` for ``precision="fp32"``, ``~3e-2`` for ``"tf32"``.
``method="sketch"``
    Compress the rows with a Gaussian or CountSketch ``S (m, N)``,
    ``m = 2 n`` by default, then the exact pivoted QR of ``S Z`` on the CPU.
``method="qr"``
    The exact pivoted QR of ``Z`` on the CPU (the reference), for small inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from statlab.reference import id as reference_id

from .cholesky import PivotedCholesky, pivoted_cholesky_factor
from .gram import check_matrix, gram_matrix
from .sketch import SketchAccumulator, as_generator, deprecated_generator

METHODS = ("gram", "sketch", "qr")


@dataclass(frozen=True)
class ID:
    """Result of an interpolative decomposition of ``Z (N, n)``.

    Attributes
    ----------
    idx : Tensor of int64, shape (k,)
        Kept columns, in pivot order (most important first).
    coef : Tensor of float64, shape (k, n)
        Interpolation matrix with ``coef[:, idx] = I`` and
        ``Z ≈ Z[:, idx] @ coef``.
    errors : Tensor of float64, shape (min(N, n),)
        ``|R[j, j]|`` of the pivoted QR of ``Z @ diag(weights)``: the residual
        norm of the ``j``-th pivot after the ``j`` earlier ones. Non-increasing.
    residuals : Tensor of float64, shape (n + 1,)
        ``||(Z - Z[:, P[:k]] T) D||_F`` for ``k = 0..n``: the weighted residual
        of keeping the first ``k`` pivots. Non-increasing, last entry 0.

    On the Gram route ``errors = sqrt(pivots)`` of the pivoted Cholesky
    (:func:`~statlab.fast.cholesky.pivoted_cholesky` reports ``R[j, j]²``).
    """

    idx: torch.Tensor
    coef: torch.Tensor
    errors: torch.Tensor
    residuals: torch.Tensor


def interpolative_decomposition(
    Z: torch.Tensor,
    k: int | None = None,
    *,
    weights: torch.Tensor | None = None,
    ridge: float = 0.0,
    method: str = "gram",
    precision: str = "fp64",
    batch_size: int = 16384,
    sketch: str = "gaussian",
    sketch_size: int | None = None,
    rng: int | torch.Generator | None = None,
    generator: torch.Generator | None = None,
) -> ID:
    """Interpolative decomposition ``Z ≈ Z[:, idx] @ coef`` (see the module docstring).

    Parameters
    ----------
    Z : Tensor, shape (N, n)
        Activations, any floating dtype, CPU or CUDA.
    k : int, optional
        Columns to keep, ``0 <= k <= n``; ``None`` keeps all ``n``.
    weights : Tensor, shape (n,), optional
        Non-negative column weights; they change only which columns are kept.
    ridge : float, default 0
        Relative ridge ``ρ``: ``λ = ρ · trace(G_II) / k`` is added to the
        normal equations (a floor of ``10 ε`` of the accumulation type is
        always added on the Gram route so rank-deficient ``G_II`` stay solvable).
    method : {"gram", "sketch", "qr"}
    precision : {"fp64", "fp32", "tf32"}
        Gram accumulation type (``method="gram"``).
    batch_size : int
        Rows per streamed batch.
    sketch : {"gaussian", "countsketch"}
    sketch_size : int, optional
        Rows of the sketch, default ``2 n``; when ``>= N`` the sketch is skipped
        and the exact pivoted QR is used.
    rng : int or torch.Generator, optional
        Randomness of the sketch (a seed, or a generator on ``Z``'s device).
    generator : torch.Generator, optional
        Deprecated alias of ``rng``.

    Returns
    -------
    ID
        ``idx (k,)``, ``coef (k, n)``, ``errors (min(N, n),)`` on ``Z``'s device.

    Only ``Z, k, weights, ridge`` are the reference's; the rest choose how the
    fast path computes (``statlab.fast.FAST_ONLY_PARAMETERS``).
    """
    rng = deprecated_generator(rng, generator)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    N, n = check_matrix(Z)
    if method == "gram":
        G = gram_matrix(Z, precision=precision, batch_size=batch_size)
        return id_from_gram(G, k, weights=weights, ridge=ridge, rows=N)

    matrix = Z
    if method == "sketch" and (sketch_size or 2 * n) < N:
        acc = SketchAccumulator(n, sketch_size or 2 * n, kind=sketch, rng=as_generator(rng, Z.device),
                                device=Z.device, name="Z")
        for start in range(0, N, batch_size):
            acc.update(Z[start : start + batch_size])
        matrix = acc.sketch
    return id_from_matrix(matrix, k, weights=weights, ridge=ridge)


def id_from_matrix(A: torch.Tensor, k: int | None = None, *, weights=None, ridge: float = 0.0) -> ID:
    """Exact pivoted-QR ID of ``A (M, n)`` (e.g. a sketch ``S Z``), computed on the CPU."""
    check_matrix(A)
    w = None if weights is None else weights.detach().cpu().double().numpy()
    result = reference_id.interpolative_decomposition(
        A.detach().cpu().double().numpy(), k, weights=w, ridge=ridge
    )
    fields = (result.idx, result.coef, result.errors, result.residuals)
    return ID(*(torch.from_numpy(x).to(A.device) for x in fields))


def id_from_gram(
    G: torch.Tensor,
    k: int | None = None,
    *,
    weights: torch.Tensor | None = None,
    ridge: float = 0.0,
    rows: int | None = None,
) -> ID:
    """Interpolative decomposition from the Gram ``G = Z^T Z`` alone.

    Parameters
    ----------
    G : Tensor, shape (n, n)
        Symmetric PSD Gram of the activations (any float dtype; factorised in fp64).
    k, weights, ridge
        As in :func:`interpolative_decomposition`.
    rows : int, optional
        ``N``, the rows behind ``G``: ``errors`` then has ``min(N, n)`` entries.

    Returns
    -------
    ID
        Pivots of the greedy pivoted Cholesky of ``D G D`` (``D = diag(weights)``);
        ``coef[:, J] = (G_II + λ I)^{-1} G_IJ``, ``coef[:, I] = I``.
    """
    n = G.shape[0]
    k = _check_k(k, n)
    eps = torch.finfo(G.dtype).eps
    G = G.to(torch.float64)
    perm, pivots, removed, total = weighted_pivots(G, weights)
    errors = pivots.clamp_min(0).sqrt()[: min(rows, n) if rows is not None else n]
    explained = torch.cat([removed.new_zeros(1), removed.cumsum(0)])  # (n + 1,)
    residuals = (total - explained).clamp_min(0).sqrt()
    residuals[-1] = 0.0
    idx = perm[:k]
    return ID(idx, interpolation_coefficients(G, idx, ridge=ridge, eps=eps), errors, residuals)


def weighted_pivots(G: torch.Tensor, weights: torch.Tensor | None = None):
    """Greedy pivoted Cholesky of ``D G D`` (``D = diag(weights)``), on ``G``'s device.

    Returns ``(perm (n,), pivots (n,), removed (n,), trace(D G D))``; see
    :func:`statlab.fast.cholesky.pivoted_cholesky`.
    """
    diagonal = G.diagonal().to(torch.float64)
    if weights is not None:
        w = _check_weights(weights, G.shape[0]).to(diagonal)
        diagonal = diagonal * w * w  # the diagonal of D G D, rounded as the scaled copy's
    total = diagonal.sum()
    result = weighted_factor(G, weights)
    return result.perm.to(G.device), result.pivots.to(G.device), result.removed.to(G.device), total


def weighted_factor(G: torch.Tensor, weights: torch.Tensor | None = None) -> PivotedCholesky:
    """The :class:`~statlab.fast.cholesky.PivotedCholesky` of ``D G D`` (``D = diag(weights)``), factor included.

    ``D G D`` is one scratch copy of ``G`` (scaled in place), which LAPACK then
    factorises in place: the factor costs no further ``(n, n)`` buffer.
    """
    scaled = G.to(torch.float64)
    if weights is not None:
        w = _check_weights(weights, G.shape[0]).to(scaled)
        scaled = scaled * w[:, None]  # a new (n, n) tensor, scaled by columns in place: one copy of G, not two
        scaled.mul_(w[None, :])
    return pivoted_cholesky_factor(scaled, overwrite=weights is not None)


def interpolation_coefficients(G: torch.Tensor, idx: torch.Tensor, *, ridge: float = 0.0, eps: float | None = None):
    """``coef (k, n)`` with ``coef[:, I] = I`` and ``coef[:, J] = (G_II + λ I)^{-1} G_IJ``.

    ``λ = (ridge + 10 ε) · trace(G_II) / k``, ``ε`` of the Gram's accumulation
    type (default fp64): the least-squares fit of every column on the columns ``idx``.
    """
    G = G.to(torch.float64)
    n, k = G.shape[0], idx.numel()
    eps = torch.finfo(torch.float64).eps if eps is None else eps
    coef = torch.zeros(k, n, dtype=torch.float64, device=G.device)
    coef[:, idx] = torch.eye(k, dtype=torch.float64, device=G.device)
    rest = torch.ones(n, dtype=torch.bool, device=G.device)
    rest[idx] = False
    rest = torch.nonzero(rest).reshape(-1)
    if k == 0 or rest.numel() == 0:
        return coef
    G_II = G[idx][:, idx]  # (k, k)
    scale = G_II.diagonal().sum() / k
    if scale > 0:
        lam = (ridge + 10 * eps) * scale
        coef[:, rest] = solve_psd(G_II + lam * torch.eye(k, dtype=G.dtype, device=G.device), G[idx][:, rest])
    return coef


def ridge_least_squares(A: torch.Tensor, B: torch.Tensor, ridge: float) -> torch.Tensor:
    """Ridge-regularised least squares ``argmin_T ||A T - B||² + λ||T||²``, in fp64.

    ``λ = ridge · trace(A^T A) / k`` for ``A (N, k)``, ``B (N, m)``; returns
    ``T (k, m) = (A^T A + λ I)^{-1} A^T B`` (by :func:`solve_psd`), on ``A``'s device.
    """
    A = A.to(torch.float64)
    B = B.to(device=A.device, dtype=torch.float64)
    gram = A.T @ A
    lam = ridge * gram.diagonal().sum() / max(A.shape[1], 1)
    return solve_psd(gram + lam * torch.eye(A.shape[1], dtype=A.dtype, device=A.device), A.T @ B)


def solve_psd(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``X = A^{-1} B`` for a symmetric positive (semi-)definite ``A (k, k)``, ``B (k, m)``.

    Cholesky on ``A``'s device when ``A`` is positive definite; otherwise the
    minimum-norm least-squares solution (``gelsd``, on the CPU), so a singular
    Gram still gives an answer. The one PSD solve of the fast path (the
    interpolation coefficients, GOA's re-fit); twin of
    :func:`statlab.reference.solve_psd`.
    """
    chol, info = torch.linalg.cholesky_ex(A)
    if int(info) == 0:
        return torch.cholesky_solve(B, chol)
    return torch.linalg.lstsq(A.cpu(), B.cpu(), driver="gelsd").solution.to(A.device)


def reconstruction_error(Z: torch.Tensor, result: ID, *, batch_size: int = 16384) -> float:
    """Relative reconstruction error ``||Z - Z[:, idx] coef||_F / ||Z||_F``, streamed in fp64.

    Returns 0 for an all-zero ``Z``.
    """
    num = torch.zeros((), dtype=torch.float64, device=Z.device)
    den = torch.zeros((), dtype=torch.float64, device=Z.device)
    coef = result.coef.to(device=Z.device, dtype=torch.float64)
    for start in range(0, Z.shape[0], batch_size):
        block = Z[start : start + batch_size].to(torch.float64)  # (b, n)
        num += (block - block[:, result.idx] @ coef).square().sum()
        den += block.square().sum()
    return 0.0 if den == 0 else float((num / den).sqrt())


def _check_k(k, n):
    k = n if k is None else int(k)
    if not 0 <= k <= n:
        raise ValueError(f"k must lie in [0, n={n}], got {k}")
    return k


def _check_weights(weights, n):
    weights = torch.as_tensor(weights)
    if weights.shape != (n,):
        raise ValueError(f"weights must have shape (n,) = ({n},), got {tuple(weights.shape)}")
    if not torch.isfinite(weights).all() or (weights < 0).any():
        raise ValueError("weights must be finite and non-negative")
    return weights


def gram_reconstruction_error(G: torch.Tensor, result: ID) -> float:
    """``||Z - Z[:, idx] coef||_F / ||Z||_F`` from the Gram ``G = Z^T Z`` alone.

    ``||Z - Z_I T||² = tr(G) - 2 tr(T^T G_I,:) + tr(T^T G_II T)``; accurate down
    to the Gram's floor (about ``√ε · ||Z||`` of its dtype).
    """
    G = G.to(torch.float64)
    total = G.diagonal().sum()
    if total <= 0:
        return 0.0
    T = result.coef.to(G)
    G_I = G[result.idx]  # (k, n)
    residual = total - 2 * (T * G_I).sum() + (T * (G_I[:, result.idx] @ T)).sum()
    return float((residual.clamp_min(0) / total).sqrt())
