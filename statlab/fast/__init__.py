"""statlab.fast — the PyTorch fast path (CPU and CUDA).

Mirrors :mod:`statlab.reference`: the same file names, function names,
arguments and result fields, on torch tensors.
"""

from .cholesky import pivoted_cholesky
from .gram import GramAccumulator, NonFiniteActivationError
from .id import (
    ID,
    gram_reconstruction_error,
    id_from_gram,
    id_from_matrix,
    interpolative_decomposition,
    reconstruction_error,
)
from .sketch import SketchAccumulator, countsketch, gaussian_sketch

__all__ = [
    "ID",
    "interpolative_decomposition",
    "id_from_gram",
    "id_from_matrix",
    "reconstruction_error",
    "gram_reconstruction_error",
    "pivoted_cholesky",
    "GramAccumulator",
    "NonFiniteActivationError",
    "SketchAccumulator",
    "gaussian_sketch",
    "countsketch",
]
