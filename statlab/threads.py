"""SciPy's BLAS threads beside torch's: the one place that keeps them from fighting over the cores.

torch computes with its own OpenMP threads; NumPy and SciPy call the
OpenBLAS they ship, with a thread pool of its own that busy-waits. When the
cores are busy (torch's threads still spinning, another job), the two pools
oversubscribe them and a SciPy factorisation slows down several times.
Measured on the 2-core CPU (``python benchmarks/bench_threads.py``, medians
of three; ``benchmarks/results/threads.json``): SciPy's pivoted QR of a
(8000, 1536) matrix takes 2.8 s with 2 OpenBLAS threads and 4.4 s with 1 on an
idle machine, but 15.2 s with 2 and 7.1 s with 1 beside a torch job on both
cores; LAPACK's pivoted Cholesky of a 3072 Gram 0.41 / 0.45 s idle and
0.74 / 0.61 s loaded. Limiting costs at most half again when the machine is
idle and saves half when it is not, so statlab's SciPy calls (the reference
backend, LAPACK's pivoted Cholesky on the CPU, Kwon et al.'s LSMR) run inside
:func:`scipy_blas`, with :func:`blas_threads` threads: half the cores, at least one.
"""

from __future__ import annotations

import contextlib
import functools
import os


def blas_threads() -> int:
    """Threads for SciPy/NumPy's BLAS: ``$STATLAB_BLAS_THREADS``, else half the CPUs (at least 1)."""
    value = os.environ.get("STATLAB_BLAS_THREADS")
    if value is not None:
        try:
            threads = int(value)
        except ValueError:
            threads = 0
        if threads < 1:
            raise ValueError(f"STATLAB_BLAS_THREADS must be a positive integer, got {value!r}")
        return threads
    return max(1, (os.cpu_count() or 1) // 2)


@functools.lru_cache(maxsize=1)
def _controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()  # inspects the loaded libraries once, not at every call


@contextlib.contextmanager
def scipy_blas():
    """SciPy's and NumPy's BLAS limited to :func:`blas_threads` threads for the duration (torch's are untouched)."""
    with _controller().limit(limits=blas_threads(), user_api="blas"):
        yield
