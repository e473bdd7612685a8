"""Helpers every evaluation family shares: eval mode, the model's device, batch → inputs, row picks."""

from __future__ import annotations

import numpy as np
import torch

from statlab.inputs import eval_mode as _eval_mode  # noqa: F401 (the one eval-mode helper)
from statlab.inputs import model_inputs as _model_inputs  # noqa: F401 (the one batch -> inputs helper)
from statlab.offload import input_device


def _device(model) -> torch.device:
    return input_device(model)


def _spread_rows(dataset, limit: int | None):
    """``limit`` rows spread evenly over ``dataset`` (rows ``⌊i S / limit⌋``), or all.

    Evenly spread, not the first rows: STS-B dev is sorted by genre (captions
    first, then forums and news), so a prefix is not representative of it.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit={limit}: evaluate at least 1 example, or pass None for all")
    if limit is None or limit >= len(dataset):
        return dataset
    return dataset.select((np.arange(limit) * len(dataset)) // limit)
