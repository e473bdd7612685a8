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


def check_order(order, units: int, device=None) -> torch.Tensor:
    """``order`` as int64 (units,) on ``device`` if it is a permutation of ``0..units-1``, else a ValueError."""
    order = torch.as_tensor(order, dtype=torch.int64, device=device).reshape(-1)
    if order.numel() != units or not torch.equal(order.sort().values, torch.arange(units, device=order.device)):
        raise ValueError(f"order must be a permutation of the {units} units, got {order.numel()} entries")
    return order
