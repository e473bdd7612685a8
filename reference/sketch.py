"""Row sketches: compress the ``N`` rows of ``Z (N, n)`` to ``m`` rows.

STAT (seed 001, "Method") sketches the activations of long sequences before the
pivoted QR. A sketch ``S (m, N)`` is an approximate isometry on the column space
of ``Z``: ``||S Z x|| ≈ ||Z x||`` for every ``x``, so the pivots of ``S Z``
follow those of ``Z`` and the ID of ``S Z`` is an ID of ``Z`` up to a small
factor in the error.
"""

from __future__ import annotations

import numpy as np


def gaussian_sketch(Z, m, *, rng=None):
    """Gaussian sketch ``S Z`` with ``S[i, t] ~ N(0, 1/m)`` i.i.d.

    Parameters
    ----------
    Z : array_like, shape (N, n)
    m : int
        Rows of the sketch (STAT uses about ``2 n``).
    rng : numpy.random.Generator or int, optional

    Returns
    -------
    ndarray, shape (m, n)
        ``S Z`` with ``E[(S Z)^T (S Z)] = Z^T Z``.
    """
    Z = _check(Z, m)
    rng = np.random.default_rng(rng)
    S = rng.standard_normal((m, Z.shape[0])) / np.sqrt(m)
    return S @ Z


def countsketch(Z, m, *, rng=None):
    """CountSketch ``S Z``: every row of ``Z`` is added, with a random sign, to one
    of ``m`` random buckets.

    ``S[h(t), t] = s(t)`` with ``h(t)`` uniform on ``{0, …, m-1}`` and
    ``s(t) = ±1``; all other entries are 0. Costs ``O(N n)``, one pass.

    Parameters
    ----------
    Z : array_like, shape (N, n)
    m : int
    rng : numpy.random.Generator or int, optional

    Returns
    -------
    ndarray, shape (m, n)
        ``S Z`` with ``E[(S Z)^T (S Z)] = Z^T Z``.
    """
    Z = _check(Z, m)
    rng = np.random.default_rng(rng)
    buckets = rng.integers(0, m, size=Z.shape[0])
    signs = rng.choice(np.array([-1.0, 1.0]), size=Z.shape[0])
    out = np.zeros((m, Z.shape[1]), dtype=np.result_type(Z.dtype, np.float64))
    np.add.at(out, buckets, signs[:, None] * Z)
    return out


def _check(Z, m):
    Z = np.asarray(Z)
    if Z.ndim != 2:
        raise ValueError(f"Z must be a 2-D array (N, n), got shape {Z.shape}")
    if int(m) < 1:
        raise ValueError(f"the sketch needs at least one row, got m={m}")
    return Z
