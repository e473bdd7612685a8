"""SciPy's BLAS threads are limited where statlab calls SciPy, and torch's are left alone."""

from __future__ import annotations

import pytest
import torch
from threadpoolctl import threadpool_info

from statlab.threads import blas_threads, scipy_blas


def openblas_threads():
    return {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["internal_api"] == "openblas"}


def test_blas_threads_reads_the_environment(monkeypatch):
    monkeypatch.setenv("STATLAB_BLAS_THREADS", "3")
    assert blas_threads() == 3
    for bad in ("0", "-1", "two"):
        monkeypatch.setenv("STATLAB_BLAS_THREADS", bad)
        with pytest.raises(ValueError, match="STATLAB_BLAS_THREADS"):
            blas_threads()
    monkeypatch.delenv("STATLAB_BLAS_THREADS")
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert blas_threads() == 8
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert blas_threads() == 1


def test_scipy_blas_limits_openblas_and_restores_it(monkeypatch):
    import scipy.linalg  # noqa: F401  (loads SciPy's OpenBLAS)

    before = openblas_threads()
    assert before, "NumPy/SciPy ship OpenBLAS"
    torch_threads = torch.get_num_threads()
    monkeypatch.setenv("STATLAB_BLAS_THREADS", "1")
    with scipy_blas():
        assert set(openblas_threads().values()) == {1}
        assert torch.get_num_threads() == torch_threads
    assert openblas_threads() == before


def test_the_reference_backend_and_lapack_run_inside_the_limit(monkeypatch):
    """Both SciPy entry points of a prune see the limited pool."""
    import numpy as np
    import scipy.linalg.lapack

    from statlab.backends import get_backend
    from statlab.fast.cholesky import pivoted_cholesky

    seen = []
    real_dpstrf, real_qr = scipy.linalg.lapack.dpstrf, scipy.linalg.qr

    def dpstrf(*args, **kwargs):
        seen.append(set(openblas_threads().values()))
        return real_dpstrf(*args, **kwargs)

    def qr(*args, **kwargs):
        seen.append(set(openblas_threads().values()))
        return real_qr(*args, **kwargs)

    monkeypatch.setenv("STATLAB_BLAS_THREADS", "1")
    monkeypatch.setattr(scipy.linalg.lapack, "dpstrf", dpstrf)
    monkeypatch.setattr(scipy.linalg, "qr", qr)
    Z = np.random.default_rng(0).standard_normal((40, 6))
    pivoted_cholesky(torch.from_numpy(Z.T @ Z))
    get_backend("reference").prune_mlp(Z, torch.randn(3, 6), 3)
    assert len(seen) >= 2 and all(s == {1} for s in seen)
