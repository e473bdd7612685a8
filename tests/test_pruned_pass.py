"""One pruned pass per block: pruned modules answer from their cached inputs, and the plans do not change.

The driver caches the input of each output map while it captures it and,
once the module is pruned, forms its output from the kept columns and the
new output map instead of re-running it (:meth:`statlab.capture.LayerReplay.stand_in`).
Every test here compares that against the same prune with the cache turned
off (``CACHE_SHARE = 0``: every module re-run, as before).
"""

from __future__ import annotations

import copy

import pytest
import torch

import statlab
import statlab.capture
from statlab.methods import Selection, Stat
from statlab.models import get_adapter

from .test_adapters import tiny_qwen2
from .test_llama import tiny_llama, windows
from .test_prune import batches, tiny_bert, tiny_distilbert

MODELS = {"bert": (tiny_bert, batches), "distilbert": (tiny_distilbert, batches),
          "llama-gqa": (tiny_llama, windows), "qwen2": (tiny_qwen2, windows)}


def prune_both(make, calibration, monkeypatch, **options):
    """``(plan with the cache, plan re-running every module, the two pruned models)`` of one dense model."""
    cached_model, rerun_model = make(), make()
    cached = statlab.prune(cached_model, calibration(), base="tiny", **options)
    with monkeypatch.context() as m:
        m.setattr(statlab.capture, "CACHE_SHARE", 0.0)
        rerun = statlab.prune(rerun_model, calibration(), base="tiny", **options)
    return cached, rerun, cached_model, rerun_model


def relative(a, b):
    a, b = a.double(), b.double()
    if b.numel() == 0:
        return 0.0 if a.shape == b.shape else float("inf")
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("budget", [{"mac_fraction": 0.5}, {"sparsity": 0.3}])
def test_cached_pass_gives_the_plan_of_rerunning(name, budget, monkeypatch):
    make, calibration = MODELS[name]
    cached, rerun, _, _ = prune_both(make, calibration, monkeypatch, **budget)
    modules = 2 * len(cached.layers)
    assert cached.meta["pruned_pass"]["rerun"] + cached.meta["pruned_pass"]["cached"] == modules
    assert cached.meta["pruned_pass"]["cached"] >= modules - len(cached.layers)  # an MLP is always cached
    assert rerun.meta["pruned_pass"] == {"cached": 0, "rerun": modules}
    assert cached.layers == rerun.layers  # kept units and curves identical
    assert set(cached.tensors) == set(rerun.tensors)
    # encoders: the same arithmetic (measured 0.0); decoders: SDPA over fewer heads reorders sums (measured ~1e-5)
    tolerance = 0.0 if name in ("bert", "distilbert") else 1e-4
    for key in cached.tensors:
        assert relative(cached.tensors[key], rerun.tensors[key]) <= tolerance, key


def test_pruned_outputs_match_on_held_out_inputs(monkeypatch):
    _, _, cached_model, rerun_model = prune_both(tiny_llama, windows, monkeypatch, mac_fraction=0.5)
    ids = windows(n=1, seed=7)[0]["input_ids"]
    with torch.no_grad():
        a, b = cached_model(input_ids=ids).logits, rerun_model(input_ids=ids).logits
    assert relative(a, b) < 1e-4


def test_removed_attention_is_rerun_through_the_adapters_zero_module(monkeypatch):
    """A module with no head left is not cached (ZeroAttention costs nothing); the plan is the rerun's."""
    def small_first_attention(modules, costs, fraction, adapter):
        choice = Stat.sizes(method, modules, costs, fraction, adapter)
        sizes = dict(choice.sizes)
        first = next(k for k in sizes if k.kind == "attention")
        sizes[first] = 0
        return type(choice)(sizes, choice.curves, choice.info)

    method = Stat()
    method.sizes = small_first_attention
    cached, rerun, _, _ = prune_both(tiny_bert, batches, monkeypatch, method=method, mac_fraction=0.6)
    assert cached.layers[0]["attn_kept"] == []
    assert cached.meta["pruned_pass"] == {"cached": 3, "rerun": 1}
    assert cached.layers == rerun.layers
    for key in cached.tensors:
        assert relative(cached.tensors[key], rerun.tensors[key]) == 0.0, key


class HalvedRows(Stat):
    """STAT that also hands back its kept input rows halved: a refit, so the cached context is stale."""

    name = "halved rows"

    def select(self, module, k):
        s = super().select(module, k)
        per_unit = [W.shape[0] // module.units for W in module.W_in]
        rows = [torch.cat([W[u * r:(u + 1) * r] for u in s.units]) if s.units else W[:0]
                for W, r in zip(module.W_in, per_unit)]
        return Selection(s.units, s.w_out, w_in_rows=tuple(0.5 * w.detach().double() for w in rows))


@pytest.mark.parametrize("name", ["bert", "llama-gqa"])
def test_refitted_input_rows_are_rerun(name, monkeypatch):
    make, calibration = MODELS[name]
    cached, rerun, _, _ = prune_both(make, calibration, monkeypatch, method=HalvedRows(), mac_fraction=0.5)
    assert cached.meta["pruned_pass"] == {"cached": 0, "rerun": 2 * len(cached.layers)}
    assert cached.layers == rerun.layers
    for key in cached.tensors:
        assert relative(cached.tensors[key], rerun.tensors[key]) == 0.0, key


def test_a_stale_cache_would_change_the_plan(monkeypatch):
    """The rerun above matters: answering the refitted modules from the cache gives another plan."""
    from statlab import driver

    make, calibration = MODELS["bert"]
    honest = statlab.prune(make(), calibration(), method=HalvedRows(), mac_fraction=0.5, base="tiny")
    monkeypatch.setattr(driver, "_reusable", lambda kind, selection: True)
    stale = statlab.prune(make(), calibration(), method=HalvedRows(), mac_fraction=0.5, base="tiny")
    assert stale.meta["pruned_pass"]["cached"] == 4
    assert max(relative(stale.tensors[k], honest.tensors[k]) for k in honest.tensors) > 1e-3


@pytest.mark.parametrize("name", MODELS)
def test_stand_ins_reproduce_the_pruned_modules(name):
    """A stand-in's output equals the pruned module's own output on the inputs it was cached from."""
    from statlab.capture import LayerReplay, capture
    from statlab.surgery import replace_module

    make, calibration = MODELS[name]
    model = make()
    statlab.prune(model, calibration(), mac_fraction=0.5, base="tiny")
    adapter = get_adapter(model)
    block = adapter.blocks(model)[1]
    calib = calibration()
    for kind, path, out in (("attention", block.attention, block.attn_out), ("mlp", block.mlp, block.mlp_out)):
        got = capture(model, calib, {"z": out}, keep=["z"], stop_early=False)
        inputs = got["kept"]["z"]
        width = inputs[0].shape[-1]
        unit = block.unit_size if kind == "attention" else 1
        replay = LayerReplay(model, adapter.layers_path(model))
        replay.stand_in(block, kind, inputs, list(range(width // unit)))  # every unit of the pruned module
        stand_in = replay._stand_ins[block.index][path]
        original = model.get_submodule(path)
        seen = []
        handle = original.register_forward_hook(lambda m, a, o: seen.append(o))
        with torch.no_grad():
            for i, batch in enumerate(calib):
                model(**batch)
        handle.remove()
        replace_module(model, path, stand_in)
        try:
            for i in range(len(calib)):
                replay.batch = i
                mine = stand_in()
                theirs = seen[i]
                if kind == "attention":
                    mine, theirs = mine[0], theirs[0]
                torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
        finally:
            replace_module(model, path, original)


def test_cache_fits_reads_the_free_memory(monkeypatch):
    from statlab.capture import cache_bytes, cache_fits

    assert cache_bytes([{"input_ids": torch.zeros(4, 10, dtype=torch.long)}], 8, torch.bfloat16) == 4 * 10 * 8 * 2
    monkeypatch.setattr(statlab.capture, "_available_host_memory", lambda: 1000)
    assert cache_fits(250, "cpu") and not cache_fits(251, "cpu")


def test_the_cache_leaves_the_model_as_the_plan_says(monkeypatch):
    """Stand-ins are swapped out after every pass: the pruned model has only its own modules, and reloads exactly."""
    model = tiny_llama()
    dense = copy.deepcopy(model)
    plan = statlab.prune(model, windows(), mac_fraction=0.5, base="tiny")
    assert not any(type(m).__name__ == "_CachedOutput" for m in model.modules())
    plan.apply(dense)
    ids = windows(n=1, seed=3)[0]["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, dense(input_ids=ids).logits)


# ---- each ID once: the one-pass variant reuses the sizes' pivot order --------------------------------------

@pytest.mark.parametrize("backend", ["fast", "reference"])
def test_a_given_order_gives_the_same_pruning(backend):
    from statlab.backends import get_backend

    b = get_backend(backend)
    g = torch.Generator().manual_seed(0)
    Z = torch.randn(200, 24, generator=g, dtype=torch.float64) @ torch.randn(24, 24, generator=g, dtype=torch.float64)
    W = torch.randn(5, 24, generator=g)
    data = Z.numpy() if backend == "reference" else Z.T @ Z
    for prune, args in ((b.prune_mlp, (W,)), (b.prune_heads, (W, 4))):
        full = prune(data, *args, 24 if len(args) == 1 else 6, curve=True)
        for k in (0, 2, 5):
            fresh, reused = prune(data, *args, k), prune(data, *args, k, order=full.idx)
            assert torch.equal(fresh.idx, reused.idx)
            # the fast MLP's fresh correction comes from the pivots' factor, a given order's from the
            # normal equations: equal to rounding (exactly equal on the other paths)
            torch.testing.assert_close(fresh.weight, reused.weight, rtol=1e-10, atol=1e-12)
        with pytest.raises(ValueError, match="permutation"):
            prune(data, *args, 2, order=full.idx[:-1])


@pytest.mark.parametrize("backend", ["fast", "reference"])
def test_one_pass_factorises_each_module_once(backend, monkeypatch):
    import statlab.fast.heads
    import statlab.fast.mlp
    import statlab.reference.heads
    import statlab.reference.mlp

    calls = []
    if backend == "fast":
        spies = [(statlab.fast.mlp, "weighted_factor"), (statlab.fast.heads, "unit_order")]
    else:
        spies = [(statlab.reference.mlp, "interpolative_decomposition"), (statlab.reference.heads, "unit_order")]
    for module, name in spies:
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, real=real, name=name, **k: calls.append(name) or real(*a, **k))
    model = tiny_bert()
    once = statlab.prune(model, batches(), mac_fraction=0.5, propagate=False, backend=backend, base="tiny")
    assert len(calls) == 2 * len(once.layers)  # the sizes' factorisations only
    monkeypatch.undo()
    # the plan equals selections made from scratch on the same statistics
    from statlab.methods import stat as stat_module

    real_prune_module = stat_module.prune_module

    def without_cache(module, k, *, curve=False):
        module.cache.clear()
        return real_prune_module(module, k, curve=curve)

    monkeypatch.setattr(stat_module, "prune_module", without_cache)
    again = statlab.prune(tiny_bert(), batches(), mac_fraction=0.5, propagate=False, backend=backend, base="tiny")
    assert once.layers == again.layers
    for key in once.tensors:  # a fresh fast MLP correction reads the pivots' factor: equal to rounding
        torch.testing.assert_close(once.tensors[key], again.tensors[key], rtol=1e-9, atol=1e-10, msg=key)
