"""GOA (seed 003) and SlimLLM (seed 004): the methods end to end on tiny random models, their formulas directly."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch

import statlab
from statlab.capture import DenseStream, LayerReplay, capture
from statlab.costs import module_costs
from statlab.methods import METHODS, get_method
from statlab.methods import goa as goa_lib
from statlab.methods import slimllm as slim_lib
from statlab.models import get_adapter
from statlab.reference import budget as budget_lib

# tiny models and calibration: the same as the driver tests use
from .test_llama import tiny_llama, windows
from .test_prune import batches, tiny_bert, tiny_distilbert

PEERS = ("goa", "slimllm")


def outputs(model, batch):
    """Encoders: last hidden states of real tokens; decoders: logits."""
    with torch.no_grad():
        if "attention_mask" in batch:
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            return out[batch["attention_mask"].bool()]
        return model(input_ids=batch["input_ids"], use_cache=False).logits.float()


def rel_error(a, b):
    return float((a - b).norm() / b.norm())


FAMILIES = {
    "bert": (tiny_bert, batches),
    "distilbert": (tiny_distilbert, batches),
    "llama-gqa": (tiny_llama, windows),
}


@functools.lru_cache(maxsize=None)
def _prune(family, method, fraction=0.5, backend="fast", propagate=True):
    """``(plan, relative output error on held-out data)`` of one seeded run (cached: several tests share runs)."""
    make, data = FAMILIES[family]
    dense = make()
    model = copy.deepcopy(dense)
    plan = statlab.prune(model, data(4), mac_fraction=fraction, method=method, base="tiny", backend=backend,
                         propagate=propagate)
    held_out = data(1, seed=99)[0]
    return plan, rel_error(outputs(model, held_out), outputs(dense, held_out))


# --------------------------------------------------------------------------- end to end


def test_registered():
    for name in PEERS:
        assert name in METHODS and get_method(name).name == name


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("method", PEERS)
def test_budget_is_met_and_beats_random(family, method):
    plan, error = _prune(family, method)
    _, random_error = _prune(family, "random")
    assert plan.meta["kept_cost"] <= 0.5 * plan.meta["dense_cost"] + 1e-6
    assert plan.meta["kept_cost"] >= 0.35 * plan.meta["dense_cost"]
    assert np.isfinite(error) and error < random_error


@pytest.mark.parametrize("family", ["bert", "llama-gqa"])
@pytest.mark.parametrize("method", PEERS)
def test_backends_agree(family, method):
    fast, fast_error = _prune(family, method, backend="fast")
    ref, ref_error = _prune(family, method, backend="reference")
    assert [l["attn_kept"] for l in fast.layers] == [l["attn_kept"] for l in ref.layers]
    assert [l["mlp_kept"] for l in fast.layers] == [l["mlp_kept"] for l in ref.layers]
    assert abs(fast_error - ref_error) <= 1e-3 * ref_error + 1e-5


@pytest.mark.parametrize("method", PEERS)
def test_one_pass_variant_and_extremes(method):
    plan, error = _prune("bert", method, propagate=False)
    assert plan.meta["kept_cost"] <= 0.5 * plan.meta["dense_cost"] + 1e-6 and np.isfinite(error)
    _, error = _prune("llama-gqa", method, fraction=1.0)
    assert error < 1e-5  # full budget: every unit kept, the recovery is the identity
    plan, error = _prune("distilbert", method, fraction=1e-6)
    assert all(not l["attn_kept"] and not l["mlp_kept"] for l in plan.layers) and np.isfinite(error)


def test_slimllm_sizes_follow_the_layer_similarity():
    plan, _ = _prune("bert", "slimllm")
    sim, ratios = plan.meta["slimllm_layer_similarity"], plan.meta["slimllm_layer_ratios"]
    assert ratios[0] != ratios[1] and (ratios[0] - ratios[1]) * (sim[0] - sim[1]) > 0  # more similar: pruned more
    sizes = [(len(l["attn_kept"]), len(l["mlp_kept"])) for l in plan.layers]
    assert (sizes[0][1] - sizes[1][1]) * (sim[0] - sim[1]) <= 0


# --------------------------------------------------------------------------- GOA formulas


@pytest.fixture
def acts():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 6)) @ rng.standard_normal((6, 6)) + rng.standard_normal(6)
    return rng, X


def test_goa_mlp_importance_is_the_second_moment(acts):
    rng, X = acts
    W1, b1, W2 = rng.standard_normal((5, 6)), rng.standard_normal(5), rng.standard_normal((4, 5))
    S, mean, N = torch.from_numpy(X.T @ X), torch.from_numpy(X.mean(0)), X.shape[0]
    pre = X @ W1.T + b1  # (N, 5): A_i x + b_i
    expected = 0.5 * (W2 ** 2).sum(0) * (pre ** 2).mean(0)  # ½ ‖B_i‖² E[(A_i x)²]  (Eq. 2-3)
    got = goa_lib.mlp_importance(torch.from_numpy(W2), (torch.from_numpy(W1),), S, N,
                                 biases=(torch.from_numpy(b1),), mean=mean)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
    Wg, Wu = rng.standard_normal((5, 6)), rng.standard_normal((5, 6))
    gated = goa_lib.mlp_importance(torch.from_numpy(W2), (torch.from_numpy(Wg), torch.from_numpy(Wu)), S, N)
    B2 = (W2 ** 2).sum(0)
    expected = (0.5 * B2 * ((X @ Wg.T) ** 2).mean(0)) * (B2 * ((X @ Wu.T) ** 2).mean(0))  # App. B §7.2
    np.testing.assert_allclose(gated.numpy(), expected, rtol=1e-10)


def test_goa_attention_importance_sums_channels(acts):
    rng, X = acts  # X stands for the context: 3 units of 2 channels
    W_O = rng.standard_normal((4, 6))
    got = goa_lib.attention_importance(torch.from_numpy(W_O), torch.from_numpy(X.T @ X), X.shape[0], 2)
    per_channel = (W_O ** 2).sum(0) * (X ** 2).mean(0)
    np.testing.assert_allclose(got.numpy(), per_channel.reshape(3, 2).sum(1), rtol=1e-10)


def test_js_distance_matches_scipy():
    from scipy.spatial.distance import jensenshannon

    rng = np.random.default_rng(1)
    P, Q = rng.dirichlet(np.ones(7), size=5), rng.dirichlet(np.ones(7), size=5)
    P[0, :3] = 0
    P[0] /= P[0].sum()
    got = goa_lib.js_distance(torch.from_numpy(P), torch.from_numpy(Q)).numpy()
    np.testing.assert_allclose(got, [jensenshannon(p, q) for p, q in zip(P, Q)], rtol=1e-9, atol=1e-12)


def test_alg1_candidates_and_removal_order():
    D = np.full((5, 5), 0.9)
    for i, j in ((0, 1), (1, 2), (3, 4)):
        D[i, j] = D[j, i] = 0.1
    # (0,1): 0 joins; (1,2): 1 joins (neither is a candidate); (3,4): 3 joins
    assert goa_lib.redundant_candidates(D, 0.2) == [0, 1, 3]
    assert goa_lib.redundant_candidates(D, 0.05) == []
    scores = np.array([5.0, 1.0, 0.5, 3.0, 0.1])
    assert goa_lib.removal_order(scores, [0, 1, 3]) == [1, 3, 0, 4, 2]


def test_goa_recovery_is_least_squares_against_dense_outputs(acts):
    rng, Z = acts
    Zp = Z + 0.1 * rng.standard_normal(Z.shape)  # what reaches the module through pruned layers
    W = rng.standard_normal((4, 6))
    cols = torch.tensor([0, 2, 3, 5])
    got = goa_lib.refit_output_map(torch.from_numpy(W), torch.from_numpy(Zp.T @ Zp), cols,
                                   torch.from_numpy(Zp.T @ (Z - Zp)))
    expected = np.linalg.lstsq(Zp[:, cols.numpy()], Z @ W.T, rcond=None)[0].T
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("family", ["bert", "llama-gqa"])
def test_dense_stream_on_a_dense_model_pairs_identical_activations(family):
    """Nothing pruned: the dense copy meets the same activations (error moment exactly 0), block after block."""
    make, data = FAMILIES[family]
    model, calibration = make(), data(3)
    adapter = get_adapter(model)
    blocks, path = adapter.blocks(model), adapter.layers_path(model)
    replay, stream = LayerReplay(model, path), DenseStream(model, path)
    captured_dense = capture(model, calibration, {f"{b.index} {p}": t for b in blocks
                                                  for p, t in (("attention", b.attn_out), ("mlp", b.mlp_out))})
    for b in blocks:
        stream.begin(b.index)
        for part, target, inputs in (("attention", b.attn_out, b.attn_in[0]), ("mlp", b.mlp_out, b.mlp_in[0])):
            got = replay.capture(calibration, b, {"z": target, "x": inputs}, dense=stream, record_dense=part == "mlp")
            assert set(got["dense error"]) == {"z", "x"}
            assert float(got["dense error"]["z"].abs().max()) == 0.0 and float(got["dense error"]["x"].abs().max()) == 0.0
            ref = captured_dense[f"{b.index} {part}"]
            assert got["z"].rows == ref.rows
            torch.testing.assert_close(got["z"].gram, ref.gram, rtol=1e-6, atol=1e-6)
    with pytest.raises(RuntimeError, match="bottom-up"):
        stream.begin(0)


class _Spy(goa_lib.Goa):
    """GOA that also keeps what the driver handed each selection, and re-measures with halved input maps."""

    def __init__(self, **options):
        super().__init__(**options)
        self.seen = {}

    def select(self, module, k):
        halved = module.remeasure(tuple(0.5 * w.detach() for w in module.W_in))
        again = module.remeasure(tuple(w.detach() for w in module.W_in))
        self.seen[module.key] = (module, halved, again, self._explicit(module))
        return super().select(module, k)

    def _explicit(self, module):
        """``Z''`` with halved input maps by a plain capture of the model as it stands (the layers below pruned)."""
        block = self.blocks[module.layer]
        paths = block.attn_in if module.kind == "attention" else block.mlp_in
        out = block.attn_out if module.kind == "attention" else block.mlp_out
        saved = [self.model.get_submodule(p).weight.data for p in paths]
        for p, w in zip(paths, saved):
            self.model.get_submodule(p).weight.data = 0.5 * w
        try:
            return capture(self.model, self.calibration, {"z": out}, backend="reference")["z"].matrix
        finally:
            for p, w in zip(paths, saved):
                self.model.get_submodule(p).weight.data = w

    def prepare(self, model, adapter, blocks, calibration):
        super().prepare(model, adapter, blocks, calibration)
        self.model, self.blocks, self.calibration = model, blocks, calibration


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_dense_outputs_are_the_cross_moments_of_pruned_and_dense_activations(family):
    """``output_error = Z'ᵀ(Z − Z')``, ``inputs_error = x'ᵀ(x − x')`` against explicit matrices; ``remeasure`` too."""
    make, data = FAMILIES[family]
    dense, calibration = make(), data(4)
    model, spy = copy.deepcopy(dense), _Spy()
    blocks = get_adapter(dense).blocks(dense)
    targets = {f"{b.index} {p}": t for b in blocks for p, t in (("attention", b.attn_out), ("mlp", b.mlp_out))}
    targets.update({f"{b.index} {p} inputs": t for b in blocks
                    for p, t in (("attention", b.attn_in[0]), ("mlp", b.mlp_in[0]))})
    Z = {label: r.matrix for label, r in capture(dense, calibration, targets, backend="reference").items()}
    statlab.prune(model, calibration, mac_fraction=0.5, method=spy, base="tiny", backend="reference")
    assert len(spy.seen) == 2 * len(blocks)
    for key, (module, halved, again, explicit) in spy.seen.items():
        Zp, xp = module.stats, module.inputs  # the reference backend's matrices: the pruned model's
        label = f"{key.layer} {key.kind}"
        np.testing.assert_allclose(module.output_error.numpy(), Zp.T @ (Z[label] - Zp), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(module.inputs_error.numpy(), xp.T @ (Z[label + " inputs"] - xp),
                                   rtol=1e-9, atol=1e-9)
        np.testing.assert_array_equal(again.stats, Zp)  # the same weights measure the same
        np.testing.assert_allclose(halved.stats, explicit, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(halved.output_error.numpy(), explicit.T @ (Z[label] - explicit),
                                   rtol=1e-6, atol=1e-6)
        assert module.remeasure is not None and module.propagated


def test_goa_runs_no_pass_of_its_own(monkeypatch):
    """Alg. 1's distances come from the driver's dense pass (eager attention there only), equal to the direct pass."""
    from statlab import driver

    model, calibration = tiny_llama(kv_heads=2, heads=4, layers=2), windows(3)
    adapter = get_adapter(model)
    direct = goa_lib.attention_divergence(model, adapter, adapter.blocks(model), calibration)
    expected = {str(i): goa_lib.redundant_candidates(D, 0.2) for i, D in enumerate(direct)}
    implementations = []
    real = driver.capture

    def counted(*a, **k):
        implementations.append((model.config._attn_implementation, bool(k.get("attention_of"))))
        return real(*a, **k)

    monkeypatch.setattr(driver, "capture", counted)
    monkeypatch.setattr(goa_lib, "capture", lambda *a, **k: pytest.fail("GOA ran a pass of its own"))
    before = model.config._attn_implementation
    plan = statlab.prune(model, calibration, mac_fraction=0.6, method="goa", base="tiny")
    assert implementations[0] == ("eager", True)  # the dense pass, for the attention maps alone
    assert all(impl == before and not maps for impl, maps in implementations[1:])
    assert model.config._attn_implementation == before
    assert plan.meta["goa_redundant_units"] == expected


def test_goa_divergence_on_identical_heads_is_zero():
    model = tiny_llama(kv_heads=4, heads=4, layers=1)
    attn = model.model.layers[0].self_attn
    with torch.no_grad():  # head 1 attends exactly like head 0
        attn.q_proj.weight[8:16] = attn.q_proj.weight[0:8]
        attn.k_proj.weight[8:16] = attn.k_proj.weight[0:8]
    adapter = get_adapter(model)
    (D,) = goa_lib.attention_divergence(model, adapter, adapter.blocks(model), windows(2))
    assert D.shape == (4, 4) and D[0, 1] < 1e-6 and D[0, 2] > 1e-3
    assert 0 in goa_lib.redundant_candidates(D, 1e-4)


# --------------------------------------------------------------------------- SlimLLM formulas


def test_slimllm_pearson_similarity_matches_explicit_outputs(acts):
    rng, Z = acts  # 3 units of 2 columns
    W = rng.standard_normal((5, 6))
    C = slim_lib.centred_covariance(torch.from_numpy(Z.T @ Z), Z.mean(0), Z.shape[0])
    Q = slim_lib.unit_output_covariances(torch.from_numpy(W), C, 2)
    Y_u = np.stack([Z[:, 2 * u:2 * u + 2] @ W[:, 2 * u:2 * u + 2].T for u in range(3)])
    Y = Y_u.sum(0)
    for kept in ([0], [1, 2], [0, 2]):
        X = Y_u[kept].sum(0)
        expected = sum(abs(np.corrcoef(X[:, j], Y[:, j])[0, 1]) for j in range(5))
        assert slim_lib.pearson_similarity(Q, kept) == pytest.approx(expected, rel=1e-10)
    scores = slim_lib.head_scores(Q)  # Eq. 4: similarity without each unit
    assert scores[1] == pytest.approx(slim_lib.pearson_similarity(Q, [0, 2]))
    kept = slim_lib.greedy_heads(Q, 1)
    assert slim_lib.pearson_similarity(Q, kept) >= slim_lib.pearson_similarity(Q, [int(np.argmin(scores))]) - 1e-12


def test_slimllm_regression_is_a_per_dimension_lstsq(acts):
    rng, Z = acts
    W = rng.standard_normal((4, 6))
    cols = [0, 1, 4]
    G, mean, N = torch.from_numpy(Z.T @ Z), Z.mean(0), Z.shape[0]
    X, Y = Z[:, cols] @ W[:, cols].T, Z @ W.T
    a, b = slim_lib.output_regression(torch.from_numpy(W), G, mean, N, cols)
    a0, b0 = slim_lib.output_regression(torch.from_numpy(W), G, mean, N, cols, intercept=False)
    for j in range(4):
        slope, icpt = np.linalg.lstsq(np.stack([X[:, j], np.ones(N)], 1), Y[:, j], rcond=None)[0]  # Eq. 9
        assert (a[j].item(), b[j].item()) == pytest.approx((slope, icpt), rel=1e-9)
        assert a0[j].item() == pytest.approx(np.linalg.lstsq(X[:, [j]], Y[:, j], rcond=None)[0][0], rel=1e-9)
    assert float(b0.abs().max()) == 0.0


def test_slimllm_channel_scores_match_a_direct_computation(acts):
    rng, X = acts  # MLP input (N, 6); 5 channels; 4 outputs
    Wg, Wu, Wd = rng.standard_normal((5, 6)), rng.standard_normal((5, 6)), rng.standard_normal((4, 5))
    Z = (X @ Wg.T) / (1 + np.exp(-(X @ Wg.T))) * (X @ Wu.T)
    Y = Z @ Wd.T
    lam, V = np.linalg.eigh(np.cov(Y.T, bias=True))  # PCA of the output (Eq. 1-2)
    lam = np.abs(lam)
    s = 1 / (1 + np.exp(-lam / lam.mean()))  # Eq. 6
    feature = np.abs(Wd.T @ V) * s  # Eq. 5
    x_norm, z_norm = np.linalg.norm(X, axis=0), np.linalg.norm(Z, axis=0)
    expected = (z_norm * np.linalg.norm(feature, axis=1)  # Eq. 7
                + np.linalg.norm(Wg * x_norm, axis=1) + np.linalg.norm(Wu * x_norm, axis=1))  # Eq. 8
    G = torch.from_numpy(Z.T @ Z)
    C = slim_lib.centred_covariance(G, Z.mean(0), Z.shape[0])
    got = slim_lib.channel_scores(torch.from_numpy(Wd), (torch.from_numpy(Wg), torch.from_numpy(Wu)), C, G,
                                  torch.from_numpy(X.T @ X))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-8)


def test_slimllm_piecewise_keep():
    scores = np.arange(200, dtype=float)[::-1]  # channel 199 scores lowest
    kept = slim_lib.piecewise_keep(scores, 150)  # the 2 lowest are protected, the next 50 go
    assert len(kept) == 150 and {199, 198} <= set(kept) and not {197, 148} & set(kept) and 147 in kept
    assert slim_lib.piecewise_keep(scores, 0) == [] and len(slim_lib.piecewise_keep(scores, 200)) == 200


def test_slimllm_reads_the_similarity_from_the_drivers_dense_pass(monkeypatch):
    """No forward pass of its own: one capture supplies s_l, and the sizes equal the ones s_l computed directly."""
    from statlab import driver

    model, calibration = tiny_bert(layers=3), batches(3)
    direct = slim_lib.layer_similarity(model, get_adapter(model), calibration)
    passes = []
    real = driver.capture
    monkeypatch.setattr(driver, "capture", lambda *a, **k: passes.append(k.get("similarity_of")) or real(*a, **k))
    monkeypatch.setattr(slim_lib, "capture", lambda *a, **k: pytest.fail("SlimLLM ran a pass of its own"))
    plan = statlab.prune(copy.deepcopy(model), calibration, mac_fraction=0.6, method="slimllm", base="tiny")
    assert passes == ["encoder.layer"]  # the one dense pass, for s_l alone (the selections propagate)
    np.testing.assert_array_equal(plan.meta["slimllm_layer_similarity"], direct)


def test_slimllm_layer_similarity_and_shares():
    model, calibration = tiny_bert(layers=2), batches(2)
    adapter = get_adapter(model)
    sim = slim_lib.layer_similarity(model, adapter, calibration)
    cos, count = np.zeros(2), 0
    with torch.no_grad():
        for b in calibration:
            hs = model(**b, output_hidden_states=True).hidden_states
            mask = b["attention_mask"].bool()
            for i in range(2):
                cos[i] += float(torch.nn.functional.cosine_similarity(hs[i + 1], hs[i], dim=-1)[mask].sum())
            count += int(mask.sum())
    np.testing.assert_allclose(sim, cos / count, rtol=1e-6)
    shares = slim_lib.layer_shares([0.5, 0.9, 0.7, 0.2], alpha=7.0, skip=1)  # Eq. 11
    assert shares[3] == 0 and shares[1] > shares[2] > shares[0] and shares.sum() == pytest.approx(3.0)
    costs = [c for pair in module_costs(model, adapter, adapter.blocks(model), "macs", 20) for c in pair]
    for fraction in (0.9, 0.5, 0.1):
        sizes, _ = slim_lib.sizes_for_shares(np.repeat([1.2, 0.8], 2), costs, fraction)
        dense = budget_lib.total_cost([c.units for c in costs], costs)
        assert budget_lib.total_cost(sizes, costs) <= fraction * dense + 1e-6
        assert sizes[1] <= sizes[3]  # the layer with the larger share keeps fewer neurons


def test_slimllm_sizes_refuse_modules_without_the_layer_similarity():
    """Eq. 11 without s_l would be a silent uniform split: it is refused."""
    model = tiny_bert(layers=2)
    adapter = get_adapter(model)
    blocks = adapter.blocks(model)
    keys = statlab.records.module_keys(blocks)
    costs = dict(zip(keys, (c for pair in module_costs(model, adapter, blocks, "macs", 20) for c in pair)))
    with pytest.raises(ValueError, match="layer_similarity"):
        slim_lib.SlimLLM().sizes(dict.fromkeys(keys), costs, 0.5, adapter)
