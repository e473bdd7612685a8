"""Capture of the activations STAT decomposes, by forward pre-hooks.

For every block the inputs of its two output maps are what matters: the
attention context (input of ``W_O``) and the MLP activations ``Z`` (input of
``W2``). Hooks stream them, padding excluded, into Gram accumulators (fast
backend) or into NumPy matrices (reference backend).
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from statlab.fast import GramAccumulator, NonFiniteActivationError


class _StopForward(Exception):
    """Raised inside a hook once everything wanted from a batch was captured."""


class MatrixRecorder:
    """Keeps every (masked) row in fp64 on the CPU: the reference backend's capture."""

    def __init__(self, n, name):
        self.name = name
        self.parts = []
        self.n = n

    def update(self, Z, mask=None):
        Z = Z.reshape(-1, self.n)
        if mask is not None:
            Z = Z[mask.reshape(-1)]
        Z = Z.detach().to("cpu", torch.float64)
        if not torch.isfinite(Z).all():
            raise NonFiniteActivationError(f"NaN or Inf in {self.name}")
        self.parts.append(Z.numpy())

    @property
    def rows(self):
        return sum(p.shape[0] for p in self.parts)

    @property
    def matrix(self):
        return np.concatenate(self.parts) if self.parts else np.zeros((0, self.n))


def capture(model, batches, targets, *, backend="fast", stop_early=True, desc=None):
    """Run the calibration batches and collect the inputs of the named linear maps.

    Parameters
    ----------
    model : torch.nn.Module
    batches : list of dict
        Tokenised calibration batches (``input_ids``, ``attention_mask``, ...).
    targets : dict[str, str]
        ``{label: path of an nn.Linear}``; its input ``(batch, seq, in)`` is captured.
    backend : {"fast", "reference"}
        Gram accumulators on the model's device, or fp64 matrices on the CPU.
    stop_early : bool
        Stop each forward once every target has been seen (layers above are
        not needed).

    Returns
    -------
    dict[str, GramAccumulator | MatrixRecorder]
    """
    device = next(model.parameters()).device
    recorders, handles = {}, []
    state = {"mask": None, "seen": set()}
    for label, path in targets.items():
        linear = model.get_submodule(path)
        n = linear.in_features
        recorders[label] = (GramAccumulator(n, device=device, name=label) if backend == "fast"
                            else MatrixRecorder(n, label))

        def hook(module, args, label=label):
            recorders[label].update(args[0], state["mask"])
            state["seen"].add(label)
            if stop_early and state["seen"] == set(recorders):
                raise _StopForward

        handles.append(linear.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for batch in tqdm(batches, desc=desc or "capture", leave=False, disable=None):
                batch = {k: v.to(device) for k, v in batch.items()}
                mask = batch.get("attention_mask")
                state["mask"] = None if mask is None else mask.bool()
                state["seen"] = set()
                try:
                    model(**batch)
                except _StopForward:
                    pass
    finally:
        for h in handles:
            h.remove()
    return recorders
