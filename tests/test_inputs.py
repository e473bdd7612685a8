"""Bad input to ``statlab.prune`` and the capture engine is refused, before any work, with what was expected."""

from __future__ import annotations

from dataclasses import replace

import copy

import pytest
import torch

import statlab
from statlab.capture import capture
from statlab.driver import CalibrationError
from statlab.inputs import NonFiniteWeightError, check_ridge, looks_padded, model_inputs
from statlab.methods import Goa, Magnitude, SlimLLM, Stat, get_method
from statlab.methods import goa as goa_lib
from statlab.methods import slimllm as slim_lib

from .test_llama import tiny_llama, windows
from .test_prune import batches, tiny_bert, tiny_distilbert


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        torch.testing.assert_close(after[k], v, rtol=0, atol=0, equal_nan=True)


def refused(error, match, calibration=None, model=None, **kwargs):
    """Prune with bad input; the error is ``error`` matching ``match`` and the model is untouched."""
    model = tiny_bert() if model is None else model
    kwargs.setdefault("mac_fraction", 0.5)
    before, mode = state(model), model.training
    with pytest.raises(error, match=match):
        statlab.prune(model, batches() if calibration is None else calibration, **kwargs)
    assert_unchanged(model, before)
    assert model.training == mode


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"mac_fraction": "0.5"}, TypeError, "mac_fraction must be a real number, got str '0.5'"),
        ({"mac_fraction": None, "sparsity": True}, TypeError, "sparsity must be a real number, got bool"),
        ({"mac_fraction": float("nan")}, ValueError, "mac_fraction must be finite"),
        ({"ridge": -1}, ValueError, r"ridge must be a finite float >= 0.*got -1"),
        ({"ridge": float("nan")}, ValueError, "ridge must be finite, got nan"),
        ({"ridge": float("inf")}, ValueError, "ridge must be finite"),
        ({"ridge": "0.1"}, TypeError, "ridge must be a real number"),
        ({"seq_len": 0}, ValueError, "seq_len must be an int >= 1, got 0"),
        ({"seq_len": 12.5}, TypeError, "seq_len must be an int, got float"),
        ({"seed": "0"}, TypeError, "seed must be an int, got str"),
        ({"seed": 1.0}, TypeError, "seed must be an int, got float"),
        ({"seed": -1}, ValueError, "seed must be an int >= 0"),
    ],
)
def test_bad_options(kwargs, error, message):
    refused(error, message, **kwargs)


def test_range_messages_are_kept_for_real_numbers():
    refused(ValueError, r"mac_fraction must lie in \(0, 1\], got 1.5", mac_fraction=1.5)
    refused(ValueError, r"sparsity must lie in \[0, 1\), got -0.1", mac_fraction=None, sparsity=-0.1)


@pytest.mark.parametrize("make", [lambda **o: get_method("stat", **o), Stat, Goa, SlimLLM, Magnitude])
def test_methods_validate_ridge_and_seed(make):
    with pytest.raises(ValueError, match="ridge must be a finite float >= 0"):
        make(ridge=-1)
    with pytest.raises(ValueError, match="ridge must be finite"):
        make(ridge=float("nan"))
    with pytest.raises(TypeError, match="seed must be an int"):
        make(seed="1")
    assert make(ridge=0.01).ridge == 0.01 == check_ridge(0.01)


# --------------------------------------------------------------------------- calibration


def with_batch(i, batch):
    calibration = batches()
    calibration[i] = batch
    return calibration


@pytest.mark.parametrize(
    "calibration, error, message",
    [
        (batches()[0], TypeError, "got a single dict: pass \\[batch\\]"),
        (batches()[0]["input_ids"], TypeError, "calibration must be a list of batches"),
        ((b for b in batches()), TypeError, r"list\(...\)"),
        (with_batch(3, {"input_ids": batches()[3]["input_ids"].tolist()}), TypeError,
         "calibration batch 3: input_ids must be a torch.Tensor of shape \\(batch, seq\\) with an int dtype, got list"),
        (with_batch(3, {"input_ids": batches()[3]["input_ids"].float()}), TypeError,
         "calibration batch 3: input_ids must be .* got a torch.float32 tensor"),
        (with_batch(2, [batches()[2]["input_ids"]]), TypeError, "calibration batch 2: expected a dict"),
        (with_batch(2, {"input_ids": torch.zeros(0, 20, dtype=torch.long)}), CalibrationError,
         r"calibration batch 2 is empty: input_ids has shape \(0, 20\)"),
        (with_batch(2, {"input_ids": torch.zeros(8, 0, dtype=torch.long)}), CalibrationError,
         r"calibration batch 2 is empty: input_ids has shape \(8, 0\)"),
        (with_batch(1, {}), CalibrationError, "calibration batch 1 has no input_ids \\(keys: none\\)"),
        (with_batch(1, {"attention_mask": batches()[1]["attention_mask"]}), CalibrationError,
         "calibration batch 1 has no input_ids \\(keys: attention_mask\\)"),
        (with_batch(0, {"input_ids": torch.arange(1, 21)}), CalibrationError,
         r"\(batch, seq\), got \(20,\).*unsqueeze"),
        (with_batch(4, {"input_ids": torch.full((8, 20), 120)}), CalibrationError,
         r"calibration batch 4: input_ids must lie in \[0, 120\) \(the model's vocabulary\), got values from 120"),
        (with_batch(4, {"input_ids": torch.full((8, 20), -1)}), CalibrationError, r"must lie in \[0, 120\).*from -1"),
        (with_batch(5, {"input_ids": batches()[5]["input_ids"], "attention_mask": torch.ones(8, 19)}),
         CalibrationError, r"calibration batch 5: attention_mask has shape \(8, 19\), input_ids \(8, 20\)"),
        (with_batch(5, {"input_ids": batches()[5]["input_ids"], "attention_mask": 2 * batches()[5]["attention_mask"]}),
         CalibrationError, "attention_mask must hold only 0"),
        (with_batch(5, {"input_ids": batches()[5]["input_ids"], "attention_mask": torch.zeros(8, 20)}),
         CalibrationError, "calibration batch 5 has no real tokens"),
        (with_batch(5, {**batches()[5], "token_type_ids": torch.full((8, 20), 2)}), CalibrationError,
         r"token_type_ids must lie in \[0, 2\)"),
        (with_batch(5, {**batches()[5], "position_ids": list(range(20))}), TypeError,
         "calibration batch 5: position_ids must be a torch.Tensor \\(the model takes it\\), got list"),
    ],
)
def test_bad_calibration(calibration, error, message):
    refused(error, message, calibration)


def test_padding_without_a_mask_is_refused():
    """Padded ids without their mask would be calibrated on as text: refused, as evaluation refuses them."""
    unmasked = [{"input_ids": b["input_ids"]} for b in batches()]
    refused(CalibrationError,
            r"calibration batch 0 has no attention_mask .*\(pad_token_id=0\).* Pass the attention_mask", unmasked)
    # unpadded ids need no mask
    plan = statlab.prune(tiny_bert(), [{"input_ids": b["input_ids"]} for b in batches(pad=False)], mac_fraction=0.5)
    assert plan.meta["calibration"]["tokens"] == 6 * 8 * 20


def test_a_decoder_padding_with_its_end_of_text_token():
    """Where the pad id is EOS, one EOS ending a window is text; a run of two is padding."""
    model = tiny_llama()
    model.config.pad_token_id = model.config.eos_token_id
    eos = model.config.eos_token_id
    text = windows()
    text[0]["input_ids"][1, -1] = eos
    text[1]["input_ids"][0, 0] = eos
    assert not any(looks_padded(b["input_ids"], model.config) for b in text)
    padded = windows()
    padded[2]["input_ids"][3, -5:] = eos
    refused(CalibrationError, "calibration batch 2 has no attention_mask", padded, model=model, mac_fraction=None,
            sparsity=0.3)
    statlab.prune(model, text, sparsity=0.3)  # accepted
    # a pad token that is no text token counts from one; single rows are never taken for padded
    model.config.pad_token_id = 0
    ids = torch.tensor([[5, 6, 0], [5, 6, 7]])
    assert looks_padded(ids, model.config) and not looks_padded(ids[:1], model.config)
    model.config.pad_token_id = None
    assert not looks_padded(ids, model.config)


def test_capture_checks_its_input():
    model = tiny_bert()
    target = {"layer 0 mlp": "encoder.layer.0.output.dense"}
    with pytest.raises(CalibrationError, match="calibration batch 1 has no input_ids"):
        capture(model, with_batch(1, {}), target)
    with pytest.raises(ValueError, match="backend must be one of"):
        capture(model, batches(), target, backend="numpy")
    with pytest.raises(ValueError, match="capture target 'x': the model has no module 'encoder.nope'"):
        capture(model, batches(), {"x": "encoder.nope"})
    with pytest.raises(ValueError, match="encoder.layer.0.output is a BertOutput, not a linear map"):
        capture(model, batches(), {"x": "encoder.layer.0.output"})


def test_model_inputs_is_the_one_helper():
    import statlab.capture

    # the capture engine's: SlimLLM's layer similarity and GOA's paired passes are the driver's now
    assert statlab.capture.model_inputs is model_inputs
    assert not hasattr(slim_lib, "model_inputs") and not hasattr(goa_lib, "model_inputs")
    batch = {**batches()[0], "token_type_ids": torch.zeros(8, 20, dtype=torch.long), "text": "ignored"}
    assert set(model_inputs(tiny_bert(), batch)) - {"use_cache"} == {"input_ids", "attention_mask", "token_type_ids"}
    assert set(model_inputs(tiny_distilbert(), batch)) == {"input_ids", "attention_mask"}  # no token types, no cache
    inputs = model_inputs(tiny_llama(), windows()[0])
    assert inputs["use_cache"] is False and torch.equal(inputs["input_ids"], windows()[0]["input_ids"])


# --------------------------------------------------------------------------- weights and results


def test_non_finite_weight_is_named_before_any_work():
    model = tiny_bert()
    with torch.no_grad():
        model.encoder.layer[1].output.dense.weight[0, 0] = float("nan")
    refused(NonFiniteWeightError, "layer 1 mlp: parameter encoder.layer.1.output.dense.weight has NaN/Inf",
            model=model, method="magnitude")
    model = tiny_bert()
    with torch.no_grad():
        model.embeddings.word_embeddings.weight[3, 0] = float("inf")
    refused(NonFiniteWeightError, "^parameter embeddings.word_embeddings.weight", model=model)


class _Broken(Magnitude):
    """Magnitude whose new output maps are multiplied by ``factor`` from layer 1 on."""

    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def select(self, module, k):
        selection = super().select(module, k)
        return replace(selection, w_out=selection.w_out * (self.factor if module.layer == 1 else 1.0))


def test_non_finite_output_map_names_the_module_and_restores_the_mode():
    model = tiny_bert().train()
    with pytest.raises(NonFiniteWeightError, match="layer 1 attention: the new output map has NaN/Inf"):
        statlab.prune(model, batches(), mac_fraction=0.5, method=_Broken(float("nan")))
    assert all(m.training for m in model.modules())
    with pytest.raises(NonFiniteWeightError, match="layer 1 attention: the new output map overflows torch.float16"):
        statlab.prune(tiny_bert().half(), batches(), mac_fraction=0.5, method=_Broken(1e6))


def test_train_mode_prunes_as_eval_mode_and_is_restored():
    dropout = tiny_bert()
    for m in dropout.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.5
    trained = copy.deepcopy(dropout).train()
    trained.encoder.layer[0].eval()  # a caller's mixed modes come back as they were
    a = statlab.prune(copy.deepcopy(dropout).eval(), batches(), mac_fraction=0.5, base="tiny")
    b = statlab.prune(trained, batches(), mac_fraction=0.5, base="tiny")
    assert a.layers == b.layers and all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    assert trained.training and trained.encoder.layer[1].training and trained.encoder.layer[1].output.dense.training
    assert not any(m.training for m in trained.encoder.layer[0].modules())
