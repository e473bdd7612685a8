"""Stat(intercept=True): the ID and the correction on centred activations, the mean folded into the bias (issue 17, item 2)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import statlab
from statlab.backends import get_backend
from statlab.methods import Stat
from statlab.plan import PruningPlan

from .test_methods_peers import FAMILIES, _prune, outputs
from .test_prune import batches, tiny_bert


@pytest.mark.parametrize("backend", ["fast", "reference"])
def test_centred_statistics_on_both_backends(backend):
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((50, 7)) + rng.standard_normal(7) * 3  # (N, n), far from centred
    be = get_backend(backend)
    data = torch.from_numpy(Z.T @ Z) if backend == "fast" else Z
    centred = be.centred(data, Z.mean(axis=0), Z.shape[0])
    Zc = Z - Z.mean(axis=0)
    np.testing.assert_allclose(be.gram(centred).numpy(), Zc.T @ Zc, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(be.gram(data).numpy(), (Z.T @ Z) if backend == "fast" else be.gram(Z).numpy())


@pytest.mark.parametrize("backend", ["fast", "reference"])
def test_the_first_mlp_is_the_least_squares_fit_with_an_intercept(backend):
    """One pass, no padding: layer 0's MLP output map and bias solve min ‖Z Wᵀ + b − Z_K W'ᵀ − 1 b'ᵀ‖ (lstsq)."""
    dense, data = tiny_bert(), batches(4, pad=False)
    model = copy.deepcopy(dense)
    plan = statlab.prune(model, data, mac_fraction=0.5, method=Stat(intercept=True), base="tiny", backend=backend,
                         propagate=False)
    kept = plan.layers[0]["mlp_kept"]
    assert 0 < len(kept) < dense.config.intermediate_size
    rows = []
    out_map = dense.encoder.layer[0].output.dense
    handle = out_map.register_forward_pre_hook(lambda _, args: rows.append(args[0].reshape(-1, args[0].shape[-1])))
    with torch.no_grad():
        for batch in data:
            dense(**batch)
    handle.remove()
    Z = torch.cat(rows).double().numpy()  # (N, n): the output map's input on the calibration tokens
    W, b = out_map.weight.detach().double().numpy(), out_map.bias.detach().double().numpy()
    design = np.hstack([Z[:, kept], np.ones((Z.shape[0], 1))])  # (N, k + 1)
    solution = np.linalg.lstsq(design, Z @ W.T + b, rcond=None)[0]  # (k + 1, out)
    got = model.encoder.layer[0].output.dense
    np.testing.assert_allclose(got.weight.detach().double().numpy(), solution[:-1].T, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got.bias.detach().double().numpy(), solution[-1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["bert", "distilbert", "llama-gqa"])
def test_intercept_meets_the_budget_beats_random_and_reloads(family, tmp_path):
    make, data = FAMILIES[family]
    dense = make()
    held_out = data(1, seed=99)[0]
    model = copy.deepcopy(dense)
    plan = statlab.prune(model, data(4), mac_fraction=0.5, method=Stat(intercept=True), base="tiny")
    assert plan.meta["method"] == "stat (intercept)"
    assert plan.meta["kept_cost"] <= 0.5 * plan.meta["dense_cost"] + 1e-6
    biases = [name for name in plan.tensors if name.endswith(".bias")]
    assert len(biases) == 2 * len(plan.layers)  # every output map's bias, added where the model had none (Llama)
    out, ref = outputs(model, held_out), outputs(dense, held_out)
    _, random_error = _prune(family, "random")
    assert float((out - ref).norm() / ref.norm()) < random_error
    plan.save(tmp_path / family)
    reloaded = PruningPlan.load(tmp_path / family).apply(copy.deepcopy(dense))
    assert torch.equal(outputs(reloaded, held_out), out)


def test_intercept_options_are_checked():
    assert Stat(intercept=True, correction=False).label == "stat (no correction, intercept)"
    with pytest.raises(ValueError, match="choose one"):
        Stat(intercept=True, dense_target=0.5)
