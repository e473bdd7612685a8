"""Shrinking ``nn.Linear`` modules in place, keeping their dtype and device.

``transformers.pytorch_utils.prune_linear_layer`` builds fp32 layers; these
helpers keep the model's dtype (bf16/fp16/fp32) and accept a corrected weight.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn


def replace_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def _new_linear(in_features, out_features, like: nn.Linear, weight, bias):
    with warnings.catch_warnings():  # a removed module (k = 0) is a zero-width map: nothing to initialise
        warnings.filterwarnings("ignore", "Initializing zero-element tensors", UserWarning)
        layer = nn.Linear(in_features, out_features, bias=bias is not None,
                          device=like.weight.device, dtype=like.weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    layer.requires_grad_(like.weight.requires_grad)
    return layer


def keep_rows(model: nn.Module, path: str, rows: torch.Tensor, weight: torch.Tensor | None = None) -> None:
    """Keep output rows ``rows`` of the linear map at ``path`` (units feeding forward).

    ``weight (len(rows), in)``, when given, replaces those rows' weights (a
    re-fitted input map); their bias entries are kept either way.
    """
    old = model.get_submodule(path)
    rows = rows.to(old.weight.device)
    bias = None if old.bias is None else old.bias[rows]
    new = old.weight[rows] if weight is None else weight.to(old.weight)
    replace_module(model, path, _new_linear(old.in_features, rows.numel(), old, new, bias))


def set_input_weight(model: nn.Module, path: str, weight: torch.Tensor) -> None:
    """Replace the linear map at ``path`` by one with ``weight (out, k)``; the bias stays."""
    old = model.get_submodule(path)
    new = _new_linear(weight.shape[1], old.out_features, old, weight.to(old.weight), old.bias)
    replace_module(model, path, new)


def set_bias(model: nn.Module, path: str, bias: torch.Tensor) -> None:
    """Give the linear map at ``path`` the bias ``bias (out,)``, adding one where it had none; the weight stays."""
    old = model.get_submodule(path)
    bias = bias.to(old.weight)
    if old.bias is not None:
        with torch.no_grad():
            old.bias.copy_(bias)
        return
    new = _new_linear(old.in_features, old.out_features, old, old.weight, bias)
    replace_module(model, path, new)


def unit_rows(units: torch.Tensor, rows_per_unit: int) -> torch.Tensor:
    """Row indices of ``units``, each owning ``rows_per_unit`` consecutive rows: (k·rows_per_unit,)."""
    offsets = torch.arange(rows_per_unit, device=units.device)
    return (units[:, None] * rows_per_unit + offsets).reshape(-1)
