"""Pruning one module on torch tensors; mirrors :mod:`statlab.reference.pruning`."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ModulePruning:
    """Result of pruning one module (see :class:`statlab.reference.pruning.ModulePruning`).

    Attributes
    ----------
    idx : Tensor of int64, shape (k,)
    weight : Tensor of float64, shape (out, k * u)
    residuals : Tensor of float64, shape (units + 1,), or None when not asked for
    """

    idx: torch.Tensor
    weight: torch.Tensor
    residuals: torch.Tensor | None
