"""Stat(dense_target=α): the correction fitted to the dense model's outputs (issue 17, item 5)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import statlab
from statlab.methods import Stat

from .test_llama import tiny_llama, windows
from .test_prune import batches, tiny_bert


def _inputs_of(module, model, data):
    """The input rows of ``module`` (a Linear of ``model``) over ``data``, fp64: (N, in)."""
    rows = []
    handle = module.register_forward_pre_hook(lambda _, args: rows.append(args[0].reshape(-1, args[0].shape[-1])))
    try:
        with torch.no_grad():
            for batch in data:
                model(**batch)
    finally:
        handle.remove()
    return torch.cat(rows).double()


@pytest.mark.parametrize("backend", ["fast", "reference"])
def test_the_last_correction_is_the_least_squares_fit_of_the_dense_outputs(backend):
    """α = 1: the last MLP's new down_proj solves min ‖Z'_K W'ᵀ − Z Wᵀ‖ on the calibration tokens.

    ``Z'_K`` is what reaches the pruned model's last down_proj (every layer below
    pruned and corrected), ``Z`` the dense model's input to it: both measured here
    with plain hooks, the solution by ``numpy.linalg.lstsq``.
    """
    dense, data = tiny_llama(), windows(6)
    model = copy.deepcopy(dense)
    statlab.prune(model, data, mac_fraction=0.5, method=Stat(dense_target=1.0), base="tiny", backend=backend)
    dense_proj, pruned_proj = dense.model.layers[-1].mlp.down_proj, model.model.layers[-1].mlp.down_proj
    assert pruned_proj.in_features < dense_proj.in_features  # the check below is about a real correction
    Zk, Z = _inputs_of(pruned_proj, model, data), _inputs_of(dense_proj, dense, data)  # (N, k), (N, n)
    target = (Z @ dense_proj.weight.detach().double().T).numpy()  # (N, out): the dense model's outputs of this map
    expected = np.linalg.lstsq(Zk.numpy(), target, rcond=None)[0].T  # (out, k)
    np.testing.assert_allclose(pruned_proj.weight.detach().double().numpy(), expected, rtol=1e-4, atol=1e-6)
    # the paper's target fits the pruned module's own output on Z'_K instead: a different map
    paper = copy.deepcopy(dense)
    statlab.prune(paper, data, mac_fraction=0.5, method=Stat(), base="tiny")
    assert not torch.allclose(paper.model.layers[-1].mlp.down_proj.weight, pruned_proj.weight, atol=1e-4)


@pytest.mark.parametrize("make,data", [(tiny_bert, batches), (tiny_llama, windows)], ids=["bert", "llama-gqa"])
@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_dense_target_meets_the_budget_and_keeps_the_first_module(make, data, alpha):
    dense = make()
    fixed = statlab.prune(copy.deepcopy(dense), data(4), mac_fraction=0.5, method=Stat(), base="tiny")
    model = copy.deepcopy(dense)
    plan = statlab.prune(model, data(4), mac_fraction=0.5, method=Stat(dense_target=alpha), base="tiny")
    assert plan.meta["method"] == f"stat (dense target {alpha:g})"
    assert plan.meta["kept_cost"] <= 0.5 * plan.meta["dense_cost"] + 1e-6
    # the first attention module sees the dense inputs (nothing below it is pruned): Z' = Z, the same map
    first = "layer.0.attn_out.weight"
    torch.testing.assert_close(plan.tensors[first], fixed.tensors[first], rtol=1e-9, atol=1e-12)
    assert plan.layers[0]["attn_kept"] == fixed.layers[0]["attn_kept"]


def test_dense_target_is_checked():
    for bad in (-0.1, 1.5, "dense", True, float("nan")):
        with pytest.raises(ValueError, match="dense_target"):
            Stat(dense_target=bad)
    with pytest.raises(ValueError, match="correction=True"):
        Stat(dense_target=1.0, correction=False)
    assert "dense_outputs" in Stat(dense_target=0.5).needs and "dense_outputs" not in Stat().needs
