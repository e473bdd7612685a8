"""statlab.reference — the readable NumPy/SciPy implementation of STAT.

Ground truth for the fast PyTorch path in :mod:`statlab.fast`: the same file
names, function names, arguments and result types. Imports NumPy and SciPy only,
never torch.
"""

from .id import ID, interpolative_decomposition, reconstruction_error, ridge_least_squares
from .sketch import countsketch, gaussian_sketch

__all__ = [
    "ID",
    "interpolative_decomposition",
    "reconstruction_error",
    "ridge_least_squares",
    "gaussian_sketch",
    "countsketch",
]
