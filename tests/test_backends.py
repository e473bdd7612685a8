"""Backends as objects (statlab.backends): the same operations, the same answers, and no method asks which."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from statlab.backends import BACKENDS, Backend, FastBackend, ReferenceBackend, get_backend
from statlab.methods import ModuleStats, unit_energies

ROOT = Path(__file__).resolve().parents[1]
BRANCH = re.compile(r"backend\s*(==|!=)|isinstance\([^)]*(Fast|Reference)Backend")


def test_no_method_branches_on_the_backend():
    offenders = [f"{path.relative_to(ROOT)}:{i}: {line.strip()}"
                 for path in sorted((ROOT / "statlab" / "methods").glob("*.py"))
                 for i, line in enumerate(path.read_text().splitlines(), 1) if BRANCH.search(line)]
    assert not offenders, "methods call module.backend.<operation>(...) instead of branching:\n" + "\n".join(offenders)


def test_both_backends_offer_the_same_operations():
    operations = [n for n, f in vars(Backend).items() if getattr(f, "__isabstractmethod__", False)]
    assert operations
    for name in operations:
        want = inspect.signature(getattr(Backend, name))
        for cls in (FastBackend, ReferenceBackend):
            assert inspect.signature(getattr(cls, name)).parameters.keys() == want.parameters.keys(), (cls, name)
    assert [get_backend(n).name for n in BACKENDS] == list(BACKENDS)


def test_names_become_backends():
    assert get_backend("fast") is get_backend(get_backend("fast"))
    with pytest.raises(ValueError, match="backend must be one of"):
        get_backend("numpy")
    module = ModuleStats(kind="mlp", layer=0, units=3, unit_size=1, W_out=torch.ones(2, 3), W_in=(),
                         stats=torch.eye(3), backend="fast", rows=3)
    assert isinstance(module.backend, FastBackend)


@pytest.mark.parametrize("kind, unit_size, k", [("mlp", 1, 9), ("attention", 4, 2)])
def test_the_backends_agree_on_the_same_activations(kind, unit_size, k):
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((200, 8)) @ rng.standard_normal((8, 24)) + 0.01 * rng.standard_normal((200, 24))
    W = torch.as_tensor(rng.standard_normal((6, 24)))
    modules = {
        name: ModuleStats(kind=kind, layer=0, units=24 // unit_size, unit_size=unit_size, W_out=W, W_in=(),
                          stats=data, backend=name, rows=200)
        for name, data in (("fast", torch.as_tensor(Z.T @ Z)), ("reference", Z))
    }
    fast, ref = modules["fast"], modules["reference"]
    torch.testing.assert_close(fast.gram(), ref.gram(), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(unit_energies(fast), unit_energies(ref), rtol=1e-10)
    prune = "prune_heads" if kind == "attention" else "prune_mlp"
    args = (unit_size, k) if kind == "attention" else (k,)
    a, b = (getattr(m.backend, prune)(m.stats, W, *args) for m in (fast, ref))
    assert a.idx.tolist() == b.idx.tolist()
    for x, y in ((a.weight, b.weight), (a.residuals, b.residuals)):
        assert x.dtype == y.dtype == torch.float64
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)
