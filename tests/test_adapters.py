"""The adapter contract: an abstract class, and Blocks that say what the modules are."""

from __future__ import annotations

import pytest
import torch
import transformers

import statlab
from statlab.id_demo import capture_mlp_grams
from statlab.models import ADAPTERS, DECODER_TYPES, Adapter, get_adapter
from statlab.models.bert import BertAdapter
from statlab.models.loading import DECODER_TYPES as LOADING_DECODER_TYPES

from .test_llama import tiny_llama, windows
from .test_prune import batches, tiny_bert, tiny_distilbert


def tiny_qwen2():
    """Qwen2's attention: biases on q/k/v, none on o_proj or the MLP."""
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, attn_implementation="eager",
    )
    return transformers.Qwen2ForCausalLM(config).eval()


MODELS = {"bert": tiny_bert, "distilbert": tiny_distilbert, "llama-gqa": tiny_llama, "qwen2": tiny_qwen2}


def test_a_subclass_missing_an_accessor_is_refused():
    class NoBlocks(Adapter):
        model_types = ("none",)

        def layers_path(self, model):
            return "layers"

        def hidden_size(self, model):
            return 1

        def set_units(self, model, block, kept):
            pass

        def remove_attention(self, model, block):
            pass

    with pytest.raises(TypeError, match="blocks"):
        NoBlocks()
    with pytest.raises(TypeError, match="abstract"):
        Adapter()


def test_every_accessor_is_abstract_and_documented():
    assert Adapter.__abstractmethods__ == {"layers_path", "hidden_size", "blocks", "set_units", "remove_attention"}
    for name in Adapter.__abstractmethods__:
        assert getattr(Adapter, name).__doc__, name


def test_decoder_types_come_from_the_registry():
    assert set(DECODER_TYPES) == {t for t, cls in ADAPTERS.items() if cls.causal_lm} == {"llama", "mistral", "qwen2"}
    assert LOADING_DECODER_TYPES == DECODER_TYPES
    assert not BertAdapter.causal_lm


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
def test_blocks_match_the_modules_shapes(make):
    model = make()
    adapter = get_adapter(model)
    blocks = adapter.blocks(model)
    assert [b.index for b in blocks] == list(range(len(model.get_submodule(adapter.layers_path(model)))))
    for b in blocks:
        w_in = [model.get_submodule(p) for p in b.mlp_in]
        w_out = model.get_submodule(b.mlp_out)
        width = getattr(model.config, "intermediate_size", None) or model.config.hidden_dim  # DistilBERT: hidden_dim
        assert b.mlp_units == w_out.in_features == width
        assert all(m.out_features == b.mlp_units for m in w_in)
        assert b.mlp_bias == all(m.bias is not None for m in w_in)
        q, k, v = (model.get_submodule(p) for p in b.attn_in)
        assert b.attn_bias == all(m.bias is not None for m in (q, k, v))
        assert model.get_submodule(b.attn_out).in_features == b.units * b.unit_size == q.out_features
        assert k.out_features == v.out_features == b.units * b.head_dim
        assert b.unit_size == b.heads_per_unit * b.head_dim
        assert w_out.out_features == adapter.hidden_size(model)


def test_bias_flags_per_family():
    flags = {name: {(b.attn_bias, b.mlp_bias) for b in get_adapter(m).blocks(m)}
             for name, m in ((name, make()) for name, make in MODELS.items())}
    assert flags == {"bert": {(True, True)}, "distilbert": {(True, True)}, "llama-gqa": {(False, False)},
                     "qwen2": {(True, False)}}


@pytest.mark.parametrize("make,calibration", [(tiny_bert, batches), (tiny_distilbert, batches), (tiny_llama, windows)],
                         ids=["bert", "distilbert", "llama-gqa"])
def test_pruned_blocks_report_the_pruned_shapes(make, calibration):
    model = make()
    plan = statlab.prune(model, calibration(), mac_fraction=0.5, base="tiny")
    for b, layer in zip(get_adapter(model).blocks(model), plan.layers):
        assert b.mlp_units == len(layer["mlp_kept"]) == model.get_submodule(b.mlp_out).in_features
        assert b.units == len(layer["attn_kept"])


@pytest.mark.parametrize("make,calibration", [(tiny_bert, batches), (tiny_distilbert, batches), (tiny_llama, windows)],
                         ids=["bert", "distilbert", "llama-gqa"])
def test_id_demo_captures_any_family(make, calibration):
    model = make()
    accs, Z0 = capture_mlp_grams(model, calibration(n=2))
    assert [acc.n for acc in accs] == [b.mlp_units for b in get_adapter(model).blocks(model)]
    assert Z0.shape == (accs[0].rows, accs[0].n) and Z0.dtype == torch.float64
    torch.testing.assert_close(accs[0].gram, Z0.T @ Z0)


@pytest.mark.parametrize("make", list(MODELS.values()), ids=list(MODELS))
def test_attention_maps_returns_probabilities_and_restores_the_implementation(make):
    model = make()
    adapter = get_adapter(model)
    before = model.config._attn_implementation
    block = adapter.blocks(model)[0]
    seen = []
    handle = model.get_submodule(block.attention).register_forward_hook(lambda m, a, out: seen.append(out[1]))
    ids = torch.randint(1, 90, (2, 7), generator=torch.Generator().manual_seed(0))
    try:
        with adapter.attention_maps(model), torch.no_grad():
            model(input_ids=ids)
            assert model.config._attn_implementation == "eager"
        with pytest.raises(RuntimeError), adapter.attention_maps(model):
            raise RuntimeError("the model's implementation must come back on error too")
    finally:
        handle.remove()
    assert model.config._attn_implementation == before
    probs = seen[0]  # (batch, heads, query, key): rows are distributions
    assert probs.shape[0] == 2 and probs.shape[-1] == probs.shape[-2] == 7
    assert torch.allclose(probs.sum(-1), torch.ones_like(probs.sum(-1)), atol=1e-5)
