"""statlab.reference — the readable NumPy/SciPy implementation of STAT.

Ground truth for the fast PyTorch path in :mod:`statlab.fast`: the same file
names, function names, parameter names and result fields, so the two can be
read side by side; ``tests/test_mirror.py`` compares their signatures. Imports
NumPy and SciPy only (no torch, nothing of ``statlab``).

The fast path adds Gram entry points under their own names
(``prune_mlp_from_gram``, ``id_from_gram``, ...) and a few keyword-only
parameters that choose *how* it computes (``method``, ``precision``,
``batch_size``, and ``rng`` for its sketch); both are listed in
``statlab.fast.FAST_ONLY`` and ``statlab.fast.FAST_ONLY_PARAMETERS``.

Shared, not mirrored: :mod:`statlab.reference.budget` (cost model, layer
weights, threshold search). It works on a few short lists and vectors per
model, never on activations, so one NumPy implementation serves both backends;
a torch twin would compute the same numbers under a second name. The driver
and every method import it from here whichever the backend.

Words used alike on both sides
------------------------------
``idx`` kept units in pivot order; ``coef`` the interpolation matrix;
``errors[j] = |R[j, j]|`` of the pivoted QR (the fast path's pivoted Cholesky
reports ``pivots[j] = R[j, j]² = errors[j]²``; the budget's "largest pivot" of
a module is ``errors[0]``, an output norm); ``residuals`` Frobenius residuals
for every ``k``; ``weight`` a corrected output map.
"""

from .heads import prune_heads, unit_gram, unit_order
from .id import ID, interpolative_decomposition, reconstruction_error, ridge_least_squares, solve_psd
from .mlp import output_residuals, prune_mlp
from .pruning import RIDGES, ModulePruning, RidgeChoice, gcv_ridge
from .sketch import countsketch, gaussian_sketch

__all__ = [
    "ID",
    "interpolative_decomposition",
    "reconstruction_error",
    "ridge_least_squares",
    "solve_psd",
    "ModulePruning",
    "RidgeChoice",
    "gcv_ridge",
    "prune_mlp",
    "output_residuals",
    "prune_heads",
    "unit_gram",
    "unit_order",
    "gaussian_sketch",
    "countsketch",
]
