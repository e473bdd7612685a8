"""The Selection protocol: a method's new output bias and input rows, applied by the driver, stored by the plan."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import statlab
from statlab.driver import SelectionError
from statlab.inputs import NonFiniteWeightError
from statlab.methods import Goa, Magnitude, ModuleStats, Selection, SlimLLM
from statlab.methods import goa as goa_lib
from statlab.models import get_adapter
from statlab.plan import PlanError, PruningPlan

from .test_llama import tiny_llama, windows
from .test_methods_peers import FAMILIES, outputs, rel_error
from .test_prune import batches, tiny_bert

class _Extra(Magnitude):
    """Magnitude's units and output map, plus a seeded output bias and/or perturbed input rows."""

    def __init__(self, *, bias=False, rows=False, spoil=None):
        super().__init__()
        self.bias, self.rows, self.spoil = bias, rows, spoil

    def select(self, module, k):
        chosen = super().select(module, k)
        units, w_out = chosen.units, chosen.w_out
        g = torch.Generator().manual_seed(17 * module.layer + (module.kind == "mlp"))
        b_out = 0.1 * torch.randn(w_out.shape[0], generator=g, dtype=torch.float64) if self.bias else None
        w_in_rows = None
        if self.rows:
            w_in_rows = []
            for W in module.W_in:
                per = W.shape[0] // module.units
                idx = (torch.as_tensor(units)[:, None] * per + torch.arange(per)).reshape(-1)
                w = W.detach().double()[idx]
                w_in_rows.append(w * (1 + 0.1 * torch.randn(w.shape, generator=g, dtype=torch.float64)))
            w_in_rows = tuple(w_in_rows)
        selection = Selection(units, w_out, b_out, w_in_rows)
        return self.spoil(selection, module) if self.spoil and module.layer == 1 else selection


def _round_trip(family, method, tmp_path):
    make, data = FAMILIES[family]
    dense = make()
    model = copy.deepcopy(dense)
    plan = statlab.prune(model, data(4), mac_fraction=0.5, method=method, base="tiny")
    plan.save(tmp_path / "plan")
    loaded = PruningPlan.load(tmp_path / "plan")
    reloaded = loaded.apply(copy.deepcopy(dense))
    for seed in (98, 99):
        held_out = data(1, seed=seed)[0]
        assert torch.equal(outputs(reloaded, held_out), outputs(model, held_out))
    return dense, model, reloaded, plan, loaded


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_output_bias_is_applied_saved_and_restored(family, tmp_path):
    dense, model, reloaded, plan, loaded = _round_trip(family, _Extra(bias=True), tmp_path)
    blocks = get_adapter(dense).blocks(dense)
    for b in blocks:
        for part, path in (("attn", b.attn_out), ("mlp", b.mlp_out)):
            name = f"layer.{b.index}.{part}_out.bias"
            assert name in plan.tensors and torch.equal(loaded.tensors[name], plan.tensors[name])
            if family == "llama-gqa":  # o_proj and down_proj have no bias: the method's one is added
                assert dense.get_submodule(path).bias is None
            for m in (model, reloaded):
                assert torch.equal(m.get_submodule(path).bias.detach(), plan.tensors[name])
    assert not any(".attn_in." in n or ".mlp_in." in n for n in plan.tensors)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_input_rows_are_applied_saved_and_restored(family, tmp_path):
    dense, model, reloaded, plan, loaded = _round_trip(family, _Extra(rows=True), tmp_path)
    _assert_input_rows_applied(plan, get_adapter(dense).blocks(dense), model, reloaded)
    assert not any(n.endswith(".bias") for n in plan.tensors)


def _assert_input_rows_applied(plan, blocks, *models):
    """Every input map of every module holds the plan's rows in each of ``models``, and the plan no more maps."""
    for b in blocks:
        for part, paths in (("attn", b.attn_in), ("mlp", b.mlp_in)):
            for j, path in enumerate(paths):
                name = f"layer.{b.index}.{part}_in.{j}.weight"
                for m in models:
                    assert torch.equal(m.get_submodule(path).weight.detach(), plan.tensors[name])
            assert f"layer.{b.index}.{part}_in.{len(paths)}.weight" not in plan.tensors


def test_methods_setting_neither_store_only_the_output_maps():
    plan = statlab.prune(tiny_bert(), batches(4), mac_fraction=0.5, method="magnitude", base="tiny")
    assert sorted(plan.tensors) == sorted(f"layer.{i}.{p}_out.weight" for i in range(2) for p in ("attn", "mlp"))


def test_selection_is_not_a_pair():
    with pytest.raises(TypeError):
        units, w_out = Selection([1, 0], torch.zeros(3, 2))  # fields are read by name: b_out must not be lost


def _replace(**fields):
    def spoil(selection, module):
        values = {"units": selection.units, "w_out": selection.w_out, "b_out": selection.b_out,
                  "w_in_rows": selection.w_in_rows}
        values.update({k: (v(selection, module) if callable(v) else v) for k, v in fields.items()})
        return Selection(**values)
    return spoil


@pytest.mark.parametrize("spoil, error, message", [
    (_replace(b_out=lambda s, m: torch.zeros(s.w_out.shape[0] + 1)), SelectionError,
     r"method 'magnitude', layer 1 attention: b_out has shape \(33,\), expected \(32,\)"),
    (_replace(w_out=lambda s, m: s.w_out[:, 1:]), SelectionError, r"layer 1 attention: w_out has shape"),
    (_replace(w_in_rows=lambda s, m: s.w_in_rows[:2]), SelectionError,
     r"layer 1 attention: w_in_rows must hold 3 tensors"),
    (_replace(w_in_rows=lambda s, m: (s.w_in_rows[0][1:],) + s.w_in_rows[1:]), SelectionError,
     r"layer 1 attention: w_in_rows\[0\] has shape"),
    (_replace(units=lambda s, m: s.units[:-1]), SelectionError, r"layer 1 attention: .* kept units"),
    (lambda s, m: (s.units, s.w_out), SelectionError, r"layer 1 attention: select\(\) must return a Selection, got tuple"),
    (_replace(b_out=lambda s, m: torch.full((s.w_out.shape[0],), float("nan"))), NonFiniteWeightError,
     r"layer 1 attention: the new output bias has NaN/Inf"),
    (_replace(w_in_rows=lambda s, m: tuple(w * float("nan") for w in s.w_in_rows)), NonFiniteWeightError,
     r"layer 1 attention: the new input map 0's rows has NaN/Inf"),
])
def test_malformed_selections_are_refused_naming_the_module(spoil, error, message):
    with pytest.raises(error, match=message):
        statlab.prune(tiny_bert(), batches(4), mac_fraction=0.5, method=_Extra(bias=True, rows=True, spoil=spoil))


def test_plans_with_bad_optional_tensors_are_refused():
    plan = statlab.prune(tiny_llama(), windows(4), mac_fraction=0.5, method=_Extra(bias=True, rows=True),
                         base="tiny")
    for name, bad, message in [
        ("layer.0.mlp_out.bias", torch.zeros(31), "must be a float tensor of shape"),
        ("layer.0.mlp_in.0.weight", torch.zeros(3, 32), "rows, not the"),
        ("layer.0.attn_in.7.weight", torch.zeros(2, 32), "tensors no layer uses"),
        ("layer.1.mlp_out.bias", torch.full((32,), float("inf")), "NaN or Inf"),
    ]:
        tampered = PruningPlan(plan.meta, plan.layers, {**plan.tensors, name: bad})
        with pytest.raises(PlanError, match=message):
            tampered.check_consistency()
    partial = {k: v for k, v in plan.tensors.items() if k != "layer.0.attn_in.0.weight"}
    with pytest.raises(PlanError, match="tensors no layer uses: layer.0.attn_in.1.weight"):
        PruningPlan(plan.meta, plan.layers, partial).check_consistency()
    missing = {k: v for k, v in plan.tensors.items() if k != "layer.0.attn_in.2.weight"}
    with pytest.raises(PlanError, match="2 re-fitted input maps; the model's attn has 3"):
        PruningPlan(plan.meta, plan.layers, missing).apply(tiny_llama())


# --------------------------------------------------------------------------- SlimLLM's intercept


def test_slimllm_intercept_is_the_least_squares_intercept():
    """Selection of SlimLLM on a hand-made module against a direct per-dimension NumPy fit of Eq. 9."""
    rng = np.random.default_rng(3)
    N, n, out, d = 200, 6, 4, 5
    X = rng.standard_normal((N, d))
    W1 = rng.standard_normal((n, d))
    Z = np.maximum(X @ W1.T, 0) + 0.3  # channel activations with non-zero means
    W, b_old = rng.standard_normal((out, n)), rng.standard_normal(out)
    module = ModuleStats(kind="mlp", layer=0, units=n, unit_size=1, W_out=torch.from_numpy(W),
                         W_in=(torch.from_numpy(W1),), stats=Z, backend="reference", rows=N, mean=Z.mean(0),
                         inputs=X, inputs_mean=X.mean(0), b_out=torch.from_numpy(b_old))
    for intercept in (True, False):
        sel = SlimLLM(intercept=intercept, protect=0.0).select(module, 3)
        K = sel.units
        y, x = Z @ W.T, Z[:, K] @ W[:, K].T  # dense and pruned outputs, bias excluded
        for j in range(out):
            A = np.stack([x[:, j], np.ones(N)], 1) if intercept else x[:, [j]]
            coef = np.linalg.lstsq(A, y[:, j], rcond=None)[0]
            np.testing.assert_allclose(sel.w_out[j].numpy(), coef[0] * W[j, K], rtol=1e-9)
            if intercept:
                assert float(sel.b_out[j]) == pytest.approx(b_old[j] + coef[1], rel=1e-9, abs=1e-12)
        if intercept:  # the deployed map reproduces the fitted values, bias included
            fitted = Z[:, K] @ sel.w_out.numpy().T + sel.b_out.numpy()
            best = [np.linalg.lstsq(np.stack([x[:, j], np.ones(N)], 1), y[:, j], rcond=None) for j in range(out)]
            np.testing.assert_allclose(fitted, x * [c[0][0] for c in best] + [c[0][1] for c in best] + b_old,
                                       rtol=1e-9, atol=1e-9)
        else:
            assert sel.b_out is None


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_slimllm_with_intercept_has_the_lower_held_out_error(family, tmp_path):
    """Lower on the encoders; on the tiny random Llama a wash, so only bounded there.

    Measured (relative logit error, held-out windows seeds 99 / 100): 4 calibration
    windows 0.327 / 0.351 with the intercept, 0.315 / 0.361 without; 16 windows
    0.332 / 0.327 and 0.325 / 0.344.
    """
    make, data = FAMILIES[family]
    dense = make()
    held_out = data(1, seed=99)[0]
    errors = {}
    for intercept in (True, False):
        model = copy.deepcopy(dense)
        plan = statlab.prune(model, data(4), mac_fraction=0.5, method=SlimLLM(intercept=intercept), base="tiny")
        errors[intercept] = rel_error(outputs(model, held_out), outputs(dense, held_out))
        biases = [n for n in plan.tensors if n.endswith(".bias")]
        assert len(biases) == (2 * len(plan.layers) if intercept else 0)
        assert plan.meta["method"] == ("slimllm" if intercept else "slimllm (no intercept)")
        if intercept:
            plan.save(tmp_path / family)
            reloaded = PruningPlan.load(tmp_path / family).apply(copy.deepcopy(dense))
            assert torch.equal(outputs(reloaded, held_out), outputs(model, held_out))
    if family == "llama-gqa":
        assert errors[True] < 1.05 * errors[False]
    else:
        assert errors[True] < errors[False]


# --------------------------------------------------------------------------- GOA's level-1 re-fit


def test_goa_level_one_refit_is_the_least_squares_fit():
    """``W̄ = W + ((x'ᵀx')⁻¹ x'ᵀ(x − x') Wᵀ)ᵀ`` against ``argmin ‖x' W̄ᵀ − x Wᵀ‖`` solved by NumPy."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((300, 7))
    xp = x + 0.2 * rng.standard_normal(x.shape)  # the input through the pruned layers below
    W = rng.standard_normal((4, 7))
    S, E = torch.from_numpy(xp.T @ xp), torch.from_numpy(xp.T @ (x - xp))
    W_bar = goa_lib.refit_output_map(torch.from_numpy(W), S, torch.arange(7), E)
    expected = np.linalg.lstsq(xp, x @ W.T, rcond=None)[0].T
    np.testing.assert_allclose(W_bar.numpy(), expected, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_goa_refit_inputs_is_applied_and_round_trips(family, tmp_path):
    dense, model, reloaded, plan, _ = _round_trip(family, Goa(refit_inputs=True), tmp_path)
    blocks = get_adapter(dense).blocks(dense)
    _assert_input_rows_applied(plan, blocks, model, reloaded)
    # layer 0's attention sees the dense input (x' = x): its kept rows are the dense ones
    kept = torch.as_tensor(plan.layers[0]["attn_kept"])
    for j, path in enumerate(blocks[0].attn_in):
        W = dense.get_submodule(path).weight.detach()
        per = W.shape[0] // blocks[0].units
        rows = (kept[:, None] * per + torch.arange(per)).reshape(-1)
        torch.testing.assert_close(plan.tensors[f"layer.0.attn_in.{j}.weight"], W[rows], rtol=1e-6, atol=1e-7)
    # above it the input has moved, and the rows follow it
    kept = torch.as_tensor(plan.layers[1]["mlp_kept"])
    assert not torch.allclose(plan.tensors["layer.1.mlp_in.0.weight"],
                              dense.get_submodule(blocks[1].mlp_in[0]).weight.detach()[kept])
    assert plan.meta["method"] == "goa (level-1 re-fit)"
    held_out = FAMILIES[family][1](1, seed=99)[0]
    without = copy.deepcopy(dense)
    statlab.prune(without, FAMILIES[family][1](4), mac_fraction=0.5, method="goa", base="tiny")
    refit_error = rel_error(outputs(model, held_out), outputs(dense, held_out))
    assert refit_error <= 1.01 * rel_error(outputs(without, held_out), outputs(dense, held_out))


def test_goa_refit_inputs_needs_the_recovery():
    with pytest.raises(ValueError, match="needs recovery=True"):
        Goa(refit_inputs=True, recovery=False)
    plan = statlab.prune(tiny_bert(), batches(4), mac_fraction=0.5, method=Goa(refit_inputs=True), propagate=False,
                         base="tiny")
    assert not any("_in." in n for n in plan.tensors)  # one pass: x' = x, nothing to re-fit
