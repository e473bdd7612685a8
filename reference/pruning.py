"""Pruning one module: keep ``k`` units and fold the correction into its output map."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ModulePruning:
    """Result of pruning one module (MLP neurons or attention units).

    Attributes
    ----------
    idx : ndarray of int64, shape (k,)
        Kept units in importance order (neurons, or heads / KV groups).
    weight : ndarray, shape (out, k * u)
        The corrected output map restricted to the kept units' columns
        (``u`` columns per unit: 1 for neurons, ``d_h`` or a group's width for heads).
    residuals : ndarray, shape (units + 1,), or None
        Relative output error left when the first ``k`` units of the full
        importance order are kept, ``k = 0..units``: 1 at ``k = 0``, 0 at
        ``k = units``. Drives the per-layer sizes (DESIGN §1.4). None when
        the caller asked for no curve.
    """

    idx: np.ndarray
    weight: np.ndarray
    residuals: np.ndarray | None


def check_order(order, units: int) -> np.ndarray:
    """``order`` as int64 (units,) if it is a permutation of ``0..units-1``, else a ValueError."""
    order = np.asarray(order, dtype=np.int64).reshape(-1)
    if order.size != units or not np.array_equal(np.sort(order), np.arange(units)):
        raise ValueError(f"order must be a permutation of the {units} units, got {order.size} entries")
    return order
