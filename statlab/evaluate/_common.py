"""Helpers every evaluation family shares: eval mode, the model's device, batch → inputs, row picks."""

from __future__ import annotations

import contextlib

import numpy as np
import torch


@contextlib.contextmanager
def _eval_mode(model):
    """Eval mode for the duration, then the caller's mode back."""
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _model_inputs(model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    device = _device(model)
    return {key: value.to(device) for key, value in batch.items()}


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
