"""statlab.fast — the PyTorch fast path (CPU and CUDA).

Mirrors :mod:`statlab.reference`: the same file names, function names,
parameter names and result fields, on torch tensors (``prune_mlp(Z, ...)`` on
both sides). ``__all__`` is the reference's, followed by :data:`FAST_ONLY`;
``tests/test_mirror.py`` holds the two side by side.

:data:`FAST_ONLY`
    Names with no reference twin: the Gram entry points (``*_from_gram``,
    ``id_from_gram``: the driver captures Grams, never the ``N × n``
    activations), the streaming accumulators, the pivoted Cholesky behind the
    Gram route and the exact-QR bridge ``id_from_matrix``.
:data:`FAST_ONLY_PARAMETERS`
    Keyword-only parameters a mirrored function has on this side only, after
    the shared ones: they choose *how* the fast path computes (route,
    accumulation type, rows per batch, the sketch and its ``rng``); the
    reference has one exact way. ``generator`` is the deprecated alias of ``rng``.

Shared, not mirrored: :mod:`statlab.reference.budget` (cost model, layer
weights, threshold search) works on a few short per-module lists, never on
activations, so one NumPy implementation serves both backends (see
:mod:`statlab.reference`); so does :func:`statlab.reference.heads.group_rounds`,
which orders a few head indices. The words (``idx``, ``coef``, ``errors = |R_jj|``,
``residuals``; the pivoted Cholesky's ``pivots = R_jj²``) are listed there too.
"""

from statlab.reference import __all__ as _MIRRORED

from .cholesky import pivoted_cholesky
from .gram import GramAccumulator, NonFiniteActivationError, gram_matrix
from .heads import prune_heads, prune_heads_from_gram, unit_gram, unit_order
from .id import (
    ID,
    gram_reconstruction_error,
    id_from_gram,
    id_from_matrix,
    interpolative_decomposition,
    reconstruction_error,
    ridge_least_squares,
    solve_psd,
)
from .mlp import output_residuals, output_residuals_from_gram, prune_mlp, prune_mlp_from_gram
from .pruning import RIDGES, ModulePruning, RidgeChoice, gcv_ridge, gcv_ridge_from_gram
from .sketch import SketchAccumulator, countsketch, gaussian_sketch

FAST_ONLY = (
    "id_from_gram",
    "id_from_matrix",
    "gram_reconstruction_error",
    "prune_mlp_from_gram",
    "output_residuals_from_gram",
    "prune_heads_from_gram",
    "gcv_ridge_from_gram",
    "gram_matrix",
    "pivoted_cholesky",
    "GramAccumulator",
    "SketchAccumulator",
    "NonFiniteActivationError",
)

FAST_ONLY_PARAMETERS = {
    "interpolative_decomposition": ("method", "precision", "batch_size", "sketch", "sketch_size", "rng",
                                    "generator"),
    "reconstruction_error": ("batch_size",),
}

__all__ = [*_MIRRORED, *FAST_ONLY]  # the reference's names first, in its order
