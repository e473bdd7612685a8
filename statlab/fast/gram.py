"""Streamed Gram matrices ``G = Z^T Z`` of activations that never exist whole.

The Gram route of the fast ID (DESIGN §1.1) needs only ``G (n, n)``; the
activations ``Z (N, n)`` arrive batch by batch from forward hooks, each batch is
cast to the accumulation type on the fly and added to the upper block
triangle of ``G`` only: with the columns cut into ``p`` slices, slice ``i``
adds ``Z_i^T Z[:, i:]``, ``(p + 1) / (2p)`` of a full GEMM's flops (5/8 for
the default ``p = 4``; measured 1.3–1.9× faster on a 2-core CPU for
``n`` = 1536–3072). The blocks below the diagonal are filled in when
:attr:`GramAccumulator.gram` is read.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp64", "fp32", "tf32")
SLICES = 4  # column slices of the upper-triangle update
MIN_SLICED = 256  # below this width one GEMM is as fast


class NonFiniteActivationError(ValueError):
    """Activations contain NaN or Inf; the message names where they came from."""


def check_matrix(Z: torch.Tensor):
    """``(N, n)`` of a non-empty 2-D tensor, or the error that says what ``Z`` is instead."""
    if not isinstance(Z, torch.Tensor):
        raise TypeError(f"Z must be a torch.Tensor, got {type(Z).__name__} (use statlab.reference for NumPy arrays)")
    if Z.ndim != 2:
        raise ValueError(f"Z must be a 2-D tensor (N, n), got shape {tuple(Z.shape)}")
    if Z.shape[0] == 0 or Z.shape[1] == 0:
        raise ValueError(f"Z is empty (shape {tuple(Z.shape)}): need at least one row and one column")
    return Z.shape


def gram_matrix(Z: torch.Tensor, *, precision: str = "fp64", batch_size: int = 16384) -> torch.Tensor:
    """``G = Z^T Z (n, n)`` of ``Z (N, n)``, streamed through a :class:`GramAccumulator`.

    The bridge from a matrix entry point (``prune_mlp(Z, ...)``) to its Gram
    twin (``prune_mlp_from_gram(G, ...)``): ``batch_size`` rows at a time are
    cast to the accumulation type, so an fp16 ``Z`` is never copied whole.
    """
    N, n = check_matrix(Z)
    acc = GramAccumulator(n, device=Z.device, precision=precision, name="Z")
    for start in range(0, N, batch_size):
        acc.update(Z[start : start + batch_size])
    return acc.gram


def accumulation_dtype(precision: str) -> torch.dtype:
    """The dtype a Gram is accumulated in for ``precision`` (fp64, fp32 or tf32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return torch.float64 if precision == "fp64" else torch.float32


@contextlib.contextmanager
def matmul_precision(precision: str, device: torch.device):
    """Let CUDA fp32 GEMMs use TF32 tensor cores inside the block when ``precision == "tf32"``.

    TF32 keeps 10 mantissa bits: the Gram is then accurate to about 1e-3
    relative, so residuals below ~3e-2·||Z|| are lost. A no-op on the CPU.
    """
    if precision != "tf32" or device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    saved = matmul.fp32_precision
    matmul.fp32_precision = "tf32"
    try:
        yield
    finally:
        matmul.fp32_precision = saved


class GramAccumulator:
    """Accumulate ``G = Σ_b Z_b^T Z_b`` over batches of activations.

    Parameters
    ----------
    n : int
        Columns (units) of every batch.
    device : torch.device or str, optional
        Where ``G`` lives; batches are moved there.
    precision : {"fp64", "fp32", "tf32"}
        Accumulation type. fp64 (default) keeps residuals down to about
        ``√ε64·||Z|| ≈ 1.5e-8·||Z||``; fp32 down to ``√ε32·||Z|| ≈ 3.5e-4·||Z||``;
        tf32 (CUDA tensor cores) to about ``3e-2·||Z||``.
    name : str, optional
        Where the activations come from (e.g. ``"layer 3 mlp"``), used in errors.

    Attributes
    ----------
    gram : Tensor, shape (n, n)
        ``Σ Z_b^T Z_b`` in the accumulation dtype.
    rows : int
        Rows (tokens) accumulated so far, masked rows excluded.
    """

    def __init__(self, n: int, *, device=None, precision: str = "fp64", name: str = "activations"):
        self.precision = precision
        self.dtype = accumulation_dtype(precision)
        self.name = name
        self._upper = torch.zeros(n, n, dtype=self.dtype, device=device)  # current on and above the diagonal blocks
        self._filled = True
        self._sum = torch.zeros(n, dtype=torch.float64, device=device)
        slices = SLICES if n >= MIN_SLICED else 1
        self._bounds = [i * n // slices for i in range(slices + 1)]
        self.rows = 0

    @property
    def n(self) -> int:
        return self._upper.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        """Column means of the accumulated rows, fp64, shape (n,)."""
        return self._sum / max(self.rows, 1)

    @property
    def gram(self) -> torch.Tensor:
        """``Σ Z_b^T Z_b``, shape (n, n), symmetric, in the accumulation dtype.

        The blocks below the diagonal are filled in place from their mirror
        images (no second (n, n) buffer: for a 7B model's 32 MLP Grams that
        would be another 16 GiB); the tensor is the accumulator's own storage,
        so treat it as read-only.
        """
        if not self._filled:
            b = self._bounds
            for i in range(1, len(b) - 1):
                for j in range(i):
                    self._upper[b[i]:b[i + 1], b[j]:b[j + 1]] = self._upper[b[j]:b[j + 1], b[i]:b[i + 1]].T
            self._filled = True
        return self._upper

    def update(self, Z: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Add a batch.

        Parameters
        ----------
        Z : Tensor, shape (..., n)
            Activations of any dtype (e.g. ``(batch, seq, n)`` from a hook).
        mask : Tensor of bool, shape (...), optional
            True for rows to keep (e.g. the attention mask, to drop padding).
        """
        if Z.shape[-1] != self.n:
            raise ValueError(f"{self.name}: expected {self.n} columns, got shape {tuple(Z.shape)}")
        Z = Z.reshape(-1, self.n)
        if mask is not None:
            if mask.numel() != Z.shape[0]:
                raise ValueError(
                    f"{self.name}: mask has {mask.numel()} entries for {Z.shape[0]} rows"
                )
            Z = Z[mask.reshape(-1).to(device=Z.device, dtype=torch.bool)]
        if Z.shape[0] == 0:
            return
        Z = Z.to(device=self._upper.device, dtype=self.dtype)  # (rows, n)
        b = self._bounds
        with matmul_precision(self.precision, self._upper.device):
            for lo, hi in zip(b[:-1], b[1:]):
                self._upper[lo:hi, lo:].addmm_(Z[:, lo:hi].T, Z[:, lo:])
        self._sum += Z.sum(dim=0, dtype=torch.float64)
        self._filled = len(b) == 2  # one slice: the GEMM wrote the whole matrix
        # NaN and Inf reach the diagonal sum(z^2): one reduction of n numbers checks the batch
        if not torch.isfinite(self._upper.diagonal().sum()):
            raise NonFiniteActivationError(
                f"NaN or Inf in {self.name}: check the model's dtype (fp16 overflow?) and inputs"
            )
        self.rows += Z.shape[0]
