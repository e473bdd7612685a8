"""Row sketches on torch tensors; mirrors :mod:`statlab.reference.sketch`.

A sketch ``S (m, N)`` compresses the ``N`` rows of ``Z (N, n)`` to ``m`` rows
with ``E[(S Z)^T (S Z)] = Z^T Z``. Both sketches here are sums over row blocks,
so :class:`SketchAccumulator` streams them batch by batch with the same law.
"""

from __future__ import annotations

import warnings

import torch

from .gram import NonFiniteActivationError

SKETCHES = ("gaussian", "countsketch")


def as_generator(rng, device=None) -> torch.Generator | None:
    """The ``rng`` argument as a ``torch.Generator`` (SciPy's convention, on torch).

    ``None``: torch's global generator (returned as None); an ``int``: a fresh
    generator on ``device`` seeded with it; a ``torch.Generator``: itself.
    """
    if rng is None or isinstance(rng, torch.Generator):
        return rng
    if isinstance(rng, int) and not isinstance(rng, bool):
        return torch.Generator(device=device or "cpu").manual_seed(rng)
    raise TypeError(f"rng must be None, an int seed or a torch.Generator, got {type(rng).__name__}")


def deprecated_generator(rng, generator):
    """``rng``, or the deprecated ``generator=`` it replaces (a DeprecationWarning); both: a TypeError."""
    if generator is None:
        return rng
    if rng is not None:
        raise TypeError("pass rng= only (generator= is its deprecated alias)")
    warnings.warn("generator= is deprecated: pass rng= (an int seed or a torch.Generator), as statlab.reference does",
                  DeprecationWarning, stacklevel=3)
    return generator


def gaussian_sketch(Z: torch.Tensor, m: int, *, rng=None):
    """Gaussian sketch ``S Z`` with ``S[i, t] ~ N(0, 1/m)`` i.i.d.

    Parameters
    ----------
    Z : Tensor, shape (N, n)
    m : int
        Rows of the sketch (STAT uses about ``2 n``).
    rng : int or torch.Generator, optional
        A generator on ``Z``'s device, or a seed for one (:func:`as_generator`).

    Returns
    -------
    Tensor, shape (m, n), in ``Z``'s floating dtype (fp32 at least).
    """
    rng = as_generator(rng, Z.device)
    Z = _check(Z, m)
    S = torch.randn(m, Z.shape[0], generator=rng, device=Z.device, dtype=Z.dtype)
    return (S @ Z) / m**0.5


def countsketch(Z: torch.Tensor, m: int, *, rng=None):
    """CountSketch ``S Z``: row ``t`` of ``Z`` is added with sign ``s(t) = ±1`` to
    bucket ``h(t)``, uniform on ``{0, …, m-1}``. One pass, ``O(N n)``.

    Parameters
    ----------
    Z : Tensor, shape (N, n)
    m : int
    rng : int or torch.Generator, optional

    Returns
    -------
    Tensor, shape (m, n)
    """
    rng = as_generator(rng, Z.device)
    Z = _check(Z, m)
    N = Z.shape[0]
    buckets = torch.randint(0, m, (N,), generator=rng, device=Z.device)
    signs = torch.randint(0, 2, (N,), generator=rng, device=Z.device).to(Z.dtype) * 2 - 1
    out = Z.new_zeros(m, Z.shape[1])
    return out.index_add_(0, buckets, Z * signs[:, None])


def _check(Z, m):
    if Z.ndim != 2:
        raise ValueError(f"Z must be a 2-D tensor (N, n), got shape {tuple(Z.shape)}")
    if int(m) < 1:
        raise ValueError(f"the sketch needs at least one row, got m={m}")
    if not Z.is_floating_point() or Z.dtype in (torch.float16, torch.bfloat16):
        Z = Z.float()
    return Z


class SketchAccumulator:
    """Stream ``S Z = Σ_b S_b Z_b`` over row batches ``Z_b``.

    Each batch draws its own block ``S_b`` of the sketch, so the sum has the
    same law as a one-shot sketch of the stacked rows.

    Parameters
    ----------
    n : int
        Columns of every batch.
    m : int
        Rows of the sketch.
    kind : {"gaussian", "countsketch"}
    rng : int or torch.Generator, optional
        Randomness of every block (:func:`as_generator`, on ``device``).
    device : torch.device or str, optional
    dtype : torch.dtype, default torch.float64
    name : str
        Where the activations come from, used in errors.
    generator : torch.Generator, optional
        Deprecated alias of ``rng``.
    """

    def __init__(self, n, m, *, kind="gaussian", rng=None, device=None,
                 dtype=torch.float64, name="activations", generator=None):
        if kind not in SKETCHES:
            raise ValueError(f"sketch kind must be one of {SKETCHES}, got {kind!r}")
        self.kind = kind
        self.m = int(m)
        self.rng = as_generator(deprecated_generator(rng, generator), device)
        self.name = name
        self.sketch = torch.zeros(self.m, n, dtype=dtype, device=device)
        self.rows = 0

    def update(self, Z: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Add a batch ``Z (..., n)``; ``mask (...)`` is True for rows to keep."""
        n = self.sketch.shape[1]
        Z = Z.reshape(-1, n)
        if mask is not None:
            Z = Z[mask.reshape(-1).to(device=Z.device, dtype=torch.bool)]
        if Z.shape[0] == 0:
            return
        Z = Z.to(device=self.sketch.device, dtype=self.sketch.dtype)
        if not torch.isfinite(Z).all():
            raise NonFiniteActivationError(f"NaN or Inf in {self.name}")
        fn = gaussian_sketch if self.kind == "gaussian" else countsketch
        self.sketch += fn(Z, self.m, rng=self.rng)
        self.rows += Z.shape[0]
