"""What a caller hands the library, checked before any work (DESIGN §5: bad input gets a clear error).

* :func:`check_calibration` — the calibration set: a list of batches, each a
  dict of ``input_ids (batch, seq)`` int tensors within the model's vocabulary,
  an ``attention_mask`` of the same shape, or no mask and no padding.
* :func:`check_real`, :func:`check_int`, :func:`check_ridge` — numeric options.
* :func:`check_finite_parameters` — the model's weights, named when not finite.
* :func:`model_inputs` — a checked batch as the model's forward takes it; the
  one place capture, GOA and SlimLLM turn batches into forward arguments.

The checks read only the batches and the weights (no forward pass).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import numbers
from collections.abc import Mapping, Sequence

import torch

from statlab.fast import NonFiniteActivationError
from statlab.offload import input_device, named_weights

_BATCH = "a dict with input_ids (and attention_mask) as torch.Tensor of shape (batch, seq)"


class CalibrationError(ValueError):
    """Calibration data that is empty, malformed or too small for the model."""


class NonFiniteWeightError(NonFiniteActivationError):
    """NaN or Inf in the model's weights or in a new output map; the message names the layer and module.

    A subclass of :class:`~statlab.fast.NonFiniteActivationError`: non-finite
    weights make non-finite activations, and one ``except`` catches both.
    """


def model_inputs(model, batch: Mapping) -> dict:
    """``batch`` as ``model.forward`` takes it: its accepted keys on the model's device, no KV cache.

    Keys the forward does not accept are dropped (DistilBERT takes no
    ``token_type_ids``); ``use_cache=False`` where accepted (decoders: a
    calibration pass needs no KV cache).
    """
    device = input_device(model)
    accepted = _accepted(model)
    inputs = {k: v.to(device) for k, v in batch.items() if k in accepted}
    if "use_cache" in accepted:
        inputs["use_cache"] = False
    return inputs


def _accepted(model):
    return inspect.signature(model.forward).parameters


# --------------------------------------------------------------------------- numeric options


def check_real(name: str, value, *, allow_none: bool = False) -> float | None:
    """``value`` as a float; a TypeError for bools, strings and other non-numbers, a ValueError for NaN/Inf."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def check_int(name: str, value, *, minimum: int, allow_none: bool = False) -> int | None:
    """``value`` as an int ``>= minimum``; a TypeError for bools, floats and strings."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def check_ridge(ridge) -> float:
    """The relative ridge of least-squares corrections: a finite float ``>= 0`` (0 means none)."""
    ridge = check_real("ridge", ridge)
    if ridge < 0:
        raise ValueError(f"ridge must be a finite float >= 0 (a relative regularisation; 0 for none), got {ridge}")
    return ridge


# --------------------------------------------------------------------------- calibration


def check_calibration(calibration, model) -> None:
    """Refuse a calibration set the passes could not use, saying what was expected.

    ``calibration`` must be a list (or tuple) of batches: it is read once per
    pass, so a generator or DataLoader, which is read once, would starve the
    later passes. Each batch is checked by :func:`check_batch`.

    Raises
    ------
    TypeError
        Not a list of dicts of tensors.
    CalibrationError
        Empty, or a batch with no tokens, ids outside the vocabulary, a mask of
        another shape, or visible padding without a mask.
    """
    if isinstance(calibration, Mapping):
        raise TypeError("calibration must be a list of batches, got a single dict: pass [batch]")
    if isinstance(calibration, (str, bytes, torch.Tensor)) or not isinstance(calibration, Sequence):
        raise TypeError(
            f"calibration must be a list of batches ({_BATCH}), got {type(calibration).__name__}; "
            "materialise a generator or DataLoader with list(...), it is read once per pass"
        )
    if not calibration:
        raise CalibrationError("the calibration set is empty: pass a list of tokenised batches")
    for i, batch in enumerate(calibration):
        check_batch(batch, model, name=f"calibration batch {i}")


def check_batch(batch, model, *, name: str = "batch") -> None:
    """One batch: ``input_ids`` (B, T) of an integer dtype with ids in ``[0, vocab)``, B, T >= 1.

    ``attention_mask`` and ``token_type_ids``, when given, are tensors of the
    same shape (a 0/1 mask with at least one real token). Without a mask the
    ids must not look padded (:func:`looks_padded`): padding would be taken
    for text.
    """
    if not isinstance(batch, Mapping):
        raise TypeError(f"{name}: expected {_BATCH}, got {type(batch).__name__}")
    if "input_ids" not in batch:
        keys = ", ".join(map(str, batch)) or "none"
        raise CalibrationError(f"{name} has no input_ids (keys: {keys}): expected {_BATCH}")
    ids = batch["input_ids"]
    _check_tensor(name, "input_ids", ids)
    if ids.ndim != 2:
        raise CalibrationError(
            f"{name}: input_ids must have shape (batch, seq), got {tuple(ids.shape)}"
            + ("; add the batch axis with ids.unsqueeze(0)" if ids.ndim == 1 else "")
        )
    if ids.numel() == 0:
        raise CalibrationError(f"{name} is empty: input_ids has shape {tuple(ids.shape)}; drop it or give it tokens")
    _check_range(name, "input_ids", ids, _vocab_size(model), "the model's vocabulary")
    longest = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(longest, int) and ids.shape[1] > longest:
        raise CalibrationError(f"{name}: sequences of {ids.shape[1]} tokens are longer than the model's "
                               f"{longest} positions (max_position_embeddings): use a shorter window or max_length")
    for key in ("attention_mask", "token_type_ids"):
        if key in batch:
            _check_tensor(name, key, batch[key], mask=key == "attention_mask")
            if batch[key].shape != ids.shape:
                raise CalibrationError(
                    f"{name}: {key} has shape {tuple(batch[key].shape)}, input_ids {tuple(ids.shape)}: "
                    "they must match (one entry per token)"
                )
    for key in _accepted(model).keys() & batch.keys():
        if not isinstance(batch[key], torch.Tensor):
            got = type(batch[key]).__name__
            raise TypeError(f"{name}: {key} must be a torch.Tensor (the model takes it), got {got}")
    if "token_type_ids" in batch:
        _check_range(name, "token_type_ids", batch["token_type_ids"], getattr(model.config, "type_vocab_size", None),
                     "the model's token types")
    mask = batch.get("attention_mask")
    if mask is not None:
        if ((mask != 0) & (mask != 1)).any():
            raise CalibrationError(f"{name}: attention_mask must hold only 0 (padding) and 1 (token)")
        if not mask.any():
            raise CalibrationError(f"{name} has no real tokens: its attention_mask is all 0; drop it")
    elif looks_padded(ids, model.config):
        raise CalibrationError(
            f"{name} has no attention_mask but its rows begin or end with the pad token "
            f"(pad_token_id={model.config.pad_token_id}): the padding would be calibrated on as text. "
            "Pass the attention_mask the tokenizer returns (statlab.data.tokenize_batches keeps it)."
        )


def looks_padded(ids: torch.Tensor, config) -> bool:
    """Whether ``ids (B, T)`` carry padding: some row begins or ends with a run of ``config.pad_token_id``.

    A tokenizer pads at one end of each row (``padding=True`` to the longest
    row, ``padding="max_length"`` to a fixed length). Single-row batches and
    models without a pad id are never taken for padded. Decoders often pad
    with their end- or start-of-text token, which also occurs in running text
    (a window that ends at a document boundary, Llama's BOS at the start of the
    text): where the pad id is the model's ``bos_token_id`` or
    ``eos_token_id``, only a run of two at either end of a row counts, which a
    window of text (:func:`statlab.data.calibration_windows`) does not produce.
    """
    pad = getattr(config, "pad_token_id", None)
    if pad is None or ids.shape[0] < 2:
        return False
    text_tokens = []
    for token in (getattr(config, "bos_token_id", None), getattr(config, "eos_token_id", None)):
        text_tokens += token if isinstance(token, (list, tuple)) else [token]  # Llama 3 lists several EOS ids
    run = 2 if pad in text_tokens else 1
    if ids.shape[1] < run:
        return False
    is_pad = ids == pad  # (B, T)
    return bool(is_pad[:, -run:].all(dim=1).any() or is_pad[:, :run].all(dim=1).any())


def _check_tensor(name, key, value, *, mask=False):
    """An int tensor (``input_ids``, ``token_type_ids``), or for ``mask`` a tensor of any real dtype."""
    if isinstance(value, torch.Tensor):
        ok = not value.dtype.is_complex and (mask or not (value.dtype.is_floating_point or value.dtype == torch.bool))
        if ok:
            return
        got = f"a {value.dtype} tensor"
    else:
        got = f"{type(value).__name__}; tokenise with return_tensors='pt'"
    kind = "of 0 and 1" if mask else "with an int dtype"
    raise TypeError(f"{name}: {key} must be a torch.Tensor of shape (batch, seq) {kind}, got {got}")


def _check_range(name, key, ids, size, what):
    if size is None:
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= size:
        raise CalibrationError(
            f"{name}: {key} must lie in [0, {size}) ({what}), got values from {low} to {high}; "
            "were the batches tokenised for another model?"
        )


def _vocab_size(model) -> int | None:
    """Rows of the input embedding (what an id indexes), else ``config.vocab_size``."""
    try:
        return model.get_input_embeddings().num_embeddings
    except (AttributeError, NotImplementedError):
        return getattr(model.config, "vocab_size", None)


# --------------------------------------------------------------------------- weights


def check_finite_parameters(model, blocks, layers_path: str) -> None:
    """Raise :class:`NonFiniteWeightError` naming the first parameter with NaN or Inf, and its layer and module."""
    for param_name, param in named_weights(model):  # offloaded weights read from their storage
        if param.is_floating_point() and not torch.isfinite(param).all():
            where = _module_label(param_name.rpartition(".")[0], blocks, layers_path)
            raise NonFiniteWeightError(
                f"{where + ': ' if where else ''}parameter {param_name} has NaN/Inf entries; pruning needs "
                "finite weights (reload the model, or check a lower-precision conversion)"
            )


def _module_label(path: str, blocks, layers_path: str) -> str:
    """``"layer 1 mlp"`` for a module inside a block's MLP, ``"layer 1 attention"``, ``"layer 1"``, or ``""``."""
    for b in blocks:
        for part, paths in (("attention", (b.attention, *b.attn_in, b.attn_out)), ("mlp", (*b.mlp_in, b.mlp_out))):
            if any(path == p or path.startswith(p + ".") for p in paths):
                return f"layer {b.index} {part}"
        if path.startswith(f"{layers_path}.{b.index}.") or path == f"{layers_path}.{b.index}":
            return f"layer {b.index}"
    return ""


@contextlib.contextmanager
def eval_mode(model):
    """Eval mode (no dropout) for the duration, then every module's own mode back, also on error.

    Modules created meanwhile (the pruned linear maps) take their parent's mode.
    """
    modes = {name: module.training for name, module in model.named_modules()}
    model.eval()
    try:
        yield
    finally:
        for name, module in model.named_modules():
            parent = name
            while parent not in modes:
                parent = parent.rpartition(".")[0]
            module.training = modes[parent]
