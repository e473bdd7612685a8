"""statlab.reference and statlab.fast hold side by side: the same names, parameters and result fields.

Every name in ``statlab.reference.__all__`` has a twin in ``statlab.fast`` whose
signature has the same parameters — names, kinds, defaults, order. The fast side
may add only what ``statlab.fast.FAST_ONLY`` (names) and
``statlab.fast.FAST_ONLY_PARAMETERS`` (keyword-only parameters after the shared
ones) declare; anything else is a difference and fails here.
"""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest
import torch

import statlab.reference as ref
from statlab import fast

MIRRORED = list(ref.__all__)


def test_the_same_public_names():
    assert fast.__all__ == MIRRORED + list(fast.FAST_ONLY)
    assert not set(fast.FAST_ONLY) & set(MIRRORED)
    assert set(fast.FAST_ONLY_PARAMETERS) <= set(MIRRORED)
    for name in fast.__all__:
        assert hasattr(fast, name), f"statlab.fast.__all__ lists {name} but does not define it"
    for name in MIRRORED:
        assert hasattr(ref, name), f"statlab.reference.__all__ lists {name} but does not define it"


def _parameters(obj):
    return [(p.name, p.kind, p.default) for p in inspect.signature(obj).parameters.values()]


@pytest.mark.parametrize("name", MIRRORED)
def test_the_same_parameters(name):
    ours, theirs = _parameters(getattr(ref, name)), _parameters(getattr(fast, name))
    extra = fast.FAST_ONLY_PARAMETERS.get(name, ())
    shared, added = theirs[: len(theirs) - len(extra)], theirs[len(theirs) - len(extra):]
    assert shared == ours, f"{name}: statlab.fast has {theirs}, statlab.reference {ours}"
    assert [p[0] for p in added] == list(extra), f"{name}: fast-only parameters {added}, declared {extra}"
    assert all(kind is inspect.Parameter.KEYWORD_ONLY for _, kind, _ in added), f"{name}: {added}"


@pytest.mark.parametrize("name", [n for n in MIRRORED if inspect.isclass(getattr(ref, n))])
def test_the_same_result_fields(name):
    fields = [f.name for f in dataclasses.fields(getattr(ref, name))]
    assert fields == [f.name for f in dataclasses.fields(getattr(fast, name))]
    assert getattr(ref, name).__dataclass_params__.frozen and getattr(fast, name).__dataclass_params__.frozen


def test_the_same_files():
    import pathlib

    ref_files = {p.name for p in pathlib.Path(ref.__file__).parent.glob("*.py")}
    fast_files = {p.name for p in pathlib.Path(fast.__file__).parent.glob("*.py")}
    # budget.py is shared (documented in both __init__s); cholesky.py and gram.py are the Gram route
    assert ref_files - {"budget.py"} <= fast_files
    assert fast_files - ref_files == {"cholesky.py", "gram.py"}


def test_matrix_entry_points_agree_with_the_reference_and_the_gram_ones():
    rng = np.random.default_rng(0)
    Z = np.maximum(rng.standard_normal((300, 6)) @ rng.standard_normal((6, 20)), 0) + 1e-3 * rng.standard_normal(20)
    W = rng.standard_normal((5, 20))
    Zt, Wt = torch.as_tensor(Z), torch.as_tensor(W)
    for k in (0, 7, 20):
        expected = ref.prune_mlp(Z, W, k)
        got = fast.prune_mlp(Zt, Wt, k)
        via_gram = fast.prune_mlp_from_gram(Zt.T @ Zt, Wt, k)
        np.testing.assert_array_equal(got.idx.numpy(), expected.idx)
        np.testing.assert_allclose(got.weight.numpy(), expected.weight, atol=1e-6)
        np.testing.assert_allclose(got.residuals.numpy(), expected.residuals, atol=1e-6)
        np.testing.assert_allclose(got.weight.numpy(), via_gram.weight.numpy(), rtol=1e-9, atol=1e-12)
    order = ref.prune_mlp(Z, W, 20, curve=False).idx  # the full pivot order
    np.testing.assert_allclose(fast.output_residuals(Zt, Wt, torch.as_tensor(order)).numpy(),
                               ref.output_residuals(Z, W, order), atol=1e-6)
    C, W_O = torch.as_tensor(Z), torch.as_tensor(rng.standard_normal((5, 20)))
    expected = ref.prune_heads(Z, W_O.numpy(), 4, 2)
    got = fast.prune_heads(C, W_O, 4, 2, curve=False)
    np.testing.assert_array_equal(got.idx.numpy(), expected.idx)
    np.testing.assert_allclose(got.weight.numpy(), expected.weight, atol=1e-6)
    assert got.residuals is None


def test_solve_psd_and_ridge_agree():
    rng = np.random.default_rng(1)
    A, B = rng.standard_normal((50, 6)), rng.standard_normal((50, 3))
    np.testing.assert_allclose(fast.ridge_least_squares(torch.as_tensor(A), torch.as_tensor(B), 0.1).numpy(),
                               ref.ridge_least_squares(A, B, 0.1), rtol=1e-10)
    singular = np.zeros((3, 3))  # no Cholesky: both fall back to the minimum-norm answer
    np.testing.assert_array_equal(ref.solve_psd(singular, np.ones((3, 2))), np.zeros((3, 2)))
    np.testing.assert_array_equal(fast.solve_psd(torch.zeros(3, 3, dtype=torch.float64),
                                                 torch.ones(3, 2, dtype=torch.float64)).numpy(), np.zeros((3, 2)))


@pytest.mark.parametrize("sketch", ["gaussian_sketch", "countsketch"])
def test_sketches_take_rng_on_both_sides(sketch):
    Z = np.random.default_rng(2).standard_normal((200, 5))
    np.testing.assert_array_equal(getattr(ref, sketch)(Z, 30, rng=3), getattr(ref, sketch)(Z, 30, rng=3))
    Zt = torch.as_tensor(Z)
    seeded = getattr(fast, sketch)(Zt, 30, rng=3)
    assert torch.equal(seeded, getattr(fast, sketch)(Zt, 30, rng=torch.Generator().manual_seed(3)))
    with pytest.raises(TypeError, match="rng must be"):
        getattr(fast, sketch)(Zt, 30, rng=np.random.default_rng(3))


def test_generator_is_a_deprecated_alias_of_rng():
    Z = torch.as_tensor(np.random.default_rng(4).standard_normal((400, 8)))
    with pytest.warns(DeprecationWarning, match="rng="):
        old = fast.interpolative_decomposition(Z, 4, method="sketch", sketch_size=20,
                                               generator=torch.Generator().manual_seed(5))
    new = fast.interpolative_decomposition(Z, 4, method="sketch", sketch_size=20, rng=5)
    assert torch.equal(old.idx, new.idx) and torch.equal(old.coef, new.coef)
    with pytest.raises(TypeError, match="rng= only"):
        fast.interpolative_decomposition(Z, 4, method="sketch", rng=5, generator=torch.Generator())
