"""The two backends as objects: one set of operations on captured statistics, two implementations.

``prune(..., backend="fast")`` captures streamed Grams ``G = Z^T Z`` on the
model's device and computes with :mod:`statlab.fast`; ``backend="reference"``
captures the fp64 activation matrices ``Z`` on the CPU and computes with
:mod:`statlab.reference` (DESIGN §2.1). A method never asks which: it calls
``module.backend.prune_mlp(module.stats, ...)`` and friends on the
:class:`~statlab.methods.base.ModuleStats` the driver hands it, and every
operation answers in the same types whatever the backend — torch tensors in
fp64 for matrices (on the data's device: the CPU for the reference), a
:class:`statlab.fast.ModulePruning` for a pruned module.

Methods with no reference formulas of their own (GOA, SlimLLM) work on
:meth:`Backend.gram`: under ``backend="reference"`` that is the torch fp64
Gram ``Z^T Z`` of the captured matrix, so their arithmetic is torch on the CPU
and only the capture is the reference's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from statlab import fast
from statlab import reference
from statlab.threads import scipy_blas

BACKENDS = ("fast", "reference")


class Backend(ABC):
    """What a method may do with the statistics the driver captured for one module.

    ``data`` below is what :meth:`data` made of a capture recorder: a Gram
    ``(n, n)`` tensor (fast) or an activation matrix ``(N, n)`` ndarray
    (reference), padding excluded.
    """

    name = ""

    def __repr__(self):
        return f"{type(self).__name__}()"

    @abstractmethod
    def data(self, recorder):
        """What methods see of a capture recorder (``statlab.capture.capture``'s values)."""

    @abstractmethod
    def recorder(self, n: int, name: str, *, device=None, precision: str = "fp64"):
        """What a capture streams one linear map's ``n``-wide input into (``update(Z, mask)``, ``rows``, ``mean``)."""

    @abstractmethod
    def gram(self, data, device=None) -> torch.Tensor:
        """``Z^T Z (n, n)`` in fp64 on ``device`` (default: where ``data`` is).

        A fast Gram already in fp64 there is returned as is (the accumulator's
        storage): read-only.
        """

    @abstractmethod
    def unit_blocks(self, data, units: int, unit_size: int) -> torch.Tensor:
        """``B[a, b, u] = Σ_t Z[t, u·s + a] Z[t, u·s + b]``, each unit's diagonal Gram block: (s, s, units) fp64."""

    @abstractmethod
    def prune_mlp(self, data, W_out: torch.Tensor, k: int, *, ridge: float = 0.0,
                  curve: bool = True, order=None) -> fast.ModulePruning:
        """Keep ``k`` neurons and fold the correction into ``W_out (out, n)`` (DESIGN §1.2).

        ``order``: the full pivot order an earlier call on the same data returned (``idx`` at ``k = n``).
        """

    @abstractmethod
    def prune_heads(self, data, W_out: torch.Tensor, unit_size: int, k: int, *, ridge: float = 0.0,
                    curve: bool = True, order=None) -> fast.ModulePruning:
        """Keep ``k`` attention units and fold the correction into ``W_out (out, d)`` (DESIGN §1.3).

        ``order``: the full unit order an earlier call on the same data returned (``idx`` at ``k = units``).
        """

    @abstractmethod
    def gcv_ridge(self, data, W_out: torch.Tensor, cols, rows: int) -> float:
        """The relative ridge of the correction on columns ``cols (k,)`` by generalised cross-validation.

        :func:`statlab.reference.gcv_ridge` over :data:`statlab.reference.pruning.RIDGES`;
        ``rows`` is the number of tokens behind ``data``.
        """

    @abstractmethod
    def centred(self, data, mean, rows: int):
        """The same statistics of the centred activations ``Z − 1 μᵀ`` (``mean`` μ (n,), ``rows`` tokens).

        A new object (the input is not changed): the Gram ``ZᵀZ − N μ μᵀ`` on
        the fast backend, the matrix ``Z − μ`` on the reference.
        """


class FastBackend(Backend):
    """Grams on the model's device, :mod:`statlab.fast`."""

    name = "fast"

    def recorder(self, n, name, *, device=None, precision="fp64"):
        return fast.GramAccumulator(n, device=device, precision=precision, name=name)

    def data(self, recorder):
        return recorder.gram

    def gram(self, data, device=None):
        return data.to(device=device or data.device, dtype=torch.float64)

    def unit_blocks(self, data, units, unit_size):
        G = data.to(torch.float64)
        return G.reshape(units, unit_size, units, unit_size).diagonal(dim1=0, dim2=2)

    def prune_mlp(self, data, W_out, k, *, ridge=0.0, curve=True, order=None):
        return fast.prune_mlp_from_gram(data, W_out, k, ridge=ridge, curve=curve, order=order)

    def prune_heads(self, data, W_out, unit_size, k, *, ridge=0.0, curve=True, order=None):
        return fast.prune_heads_from_gram(data, W_out, unit_size, k, ridge=ridge, curve=curve, order=order)

    def gcv_ridge(self, data, W_out, cols, rows):
        return fast.gcv_ridge_from_gram(data, W_out, cols, rows).ridge

    def centred(self, data, mean, rows):
        G = data.to(torch.float64)
        mu = torch.as_tensor(mean, dtype=torch.float64, device=G.device)
        return G - rows * torch.outer(mu, mu)  # (n, n), a new tensor


class ReferenceBackend(Backend):
    """fp64 activation matrices on the CPU, :mod:`statlab.reference` (NumPy/SciPy)."""

    name = "reference"

    def recorder(self, n, name, *, device=None, precision="fp64"):
        return MatrixRecorder(n, name)  # fp64 on the CPU whatever the precision

    def data(self, recorder):
        return recorder.matrix

    def gram(self, data, device=None):
        X = np.asarray(data, dtype=np.float64)
        with scipy_blas():
            G = torch.from_numpy(X.T @ X)
        return G if device is None else G.to(device)

    def unit_blocks(self, data, units, unit_size):
        Z = torch.from_numpy(np.asarray(data, dtype=np.float64)).reshape(-1, units, unit_size)
        return torch.einsum("nia,nib->abi", Z, Z)

    def prune_mlp(self, data, W_out, k, *, ridge=0.0, curve=True, order=None):
        order = None if order is None else np.asarray(order)
        with scipy_blas():
            return _as_torch(reference.prune_mlp(data, _numpy(W_out), k, ridge=ridge, curve=curve, order=order))

    def prune_heads(self, data, W_out, unit_size, k, *, ridge=0.0, curve=True, order=None):
        order = None if order is None else np.asarray(order)
        with scipy_blas():
            return _as_torch(reference.prune_heads(data, _numpy(W_out), unit_size, k, ridge=ridge, curve=curve,
                                                   order=order))

    def gcv_ridge(self, data, W_out, cols, rows):
        with scipy_blas():
            return reference.gcv_ridge(data, _numpy(W_out), np.asarray(cols)).ridge

    def centred(self, data, mean, rows):
        return np.asarray(data, dtype=np.float64) - np.asarray(mean, dtype=np.float64)  # (N, n), a new array


class MatrixRecorder:
    """Keeps every (masked) row in fp64 on the CPU: the reference backend's capture."""

    def __init__(self, n, name):
        self.name = name
        self.parts = []
        self.n = n

    def update(self, Z, mask=None):
        Z = Z.reshape(-1, self.n)
        if mask is not None:
            Z = Z[mask.reshape(-1)]
        Z = Z.detach().to("cpu", torch.float64)
        if not torch.isfinite(Z).all():
            raise fast.NonFiniteActivationError(f"NaN or Inf in {self.name}")
        self.parts.append(Z.numpy())

    @property
    def rows(self):
        return sum(p.shape[0] for p in self.parts)

    @property
    def mean(self):
        return self.matrix.mean(axis=0) if self.parts else np.zeros(self.n)

    @property
    def matrix(self):
        return np.concatenate(self.parts) if self.parts else np.zeros((0, self.n))


def _numpy(W: torch.Tensor) -> np.ndarray:
    return W.detach().cpu().double().numpy()


def _as_torch(result: reference.ModulePruning) -> fast.ModulePruning:
    """The reference's result as the fast path's type, sharing memory (no values change)."""
    residuals = None if result.residuals is None else torch.from_numpy(result.residuals)
    return fast.ModulePruning(torch.from_numpy(result.idx), torch.from_numpy(result.weight), residuals)


_INSTANCES = {b.name: b for b in (FastBackend(), ReferenceBackend())}


def get_backend(backend) -> Backend:
    """The backend called ``backend`` (``"fast"`` or ``"reference"``); a :class:`Backend` is returned as is."""
    if isinstance(backend, Backend):
        return backend
    if backend not in _INSTANCES:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return _INSTANCES[backend]
