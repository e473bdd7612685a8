"""What a model costs to run: parameters, wall time of a forward pass, and FLOPs as counted by torch."""

from __future__ import annotations

import statistics
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ._common import _device, _eval_mode, _model_inputs


def count_parameters(model) -> int:
    """Number of parameters; tied weights count once."""
    return sum(parameter.numel() for parameter in model.parameters())


def latency(model, batch: dict[str, torch.Tensor], *, repeats: int = 10, warmup: int = 2) -> dict:
    """Wall time of one forward pass on ``batch``, median over ``repeats`` runs.

    Timed with :func:`time.perf_counter` under :func:`torch.inference_mode`
    after ``warmup`` untimed runs; on CUDA the device is synchronised around
    each run.

    Parameters
    ----------
    model : transformers model
    batch : dict of Tensor, ``input_ids`` of shape (B, T) and optional masks
    repeats, warmup : int

    Returns
    -------
    dict
        ``median_ms`` (float), ``throughput`` (sequences per second, ``B`` over
        the median) and ``repeats``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats} must be at least 1 and warmup={warmup} non-negative")
    inputs = _model_inputs(model, batch)
    device = _device(model)
    times = []
    with _eval_mode(model), torch.inference_mode():
        for run in range(warmup + repeats):
            _synchronize(device)
            start = time.perf_counter()
            model(**inputs)
            _synchronize(device)
            if run >= warmup:
                times.append(time.perf_counter() - start)
    median = statistics.median(times)
    rows = inputs["input_ids"].shape[0]
    return {"median_ms": 1e3 * median, "throughput": rows / median, "repeats": repeats}


def measured_flops(model, batch: dict[str, torch.Tensor]) -> int:
    """FLOPs of one forward pass on ``batch``, counted by ``FlopCounterMode``.

    Counts matrix products and attention (2 FLOPs per multiply-add), so
    ``MACs = flops / 2``. Attention runs on the math SDPA backend here: the
    counter has no formula for the fused CPU kernel and would miss the
    ``2·s²·d`` attention products; the math backend's batched matmuls it counts.

    Parameters
    ----------
    model : transformers model
    batch : dict of Tensor, ``input_ids`` of shape (B, T) and optional masks

    Returns
    -------
    int
    """
    inputs = _model_inputs(model, batch)
    with (
        _eval_mode(model),
        torch.no_grad(),
        sdpa_kernel(SDPBackend.MATH),
        FlopCounterMode(display=False) as counter,
    ):
        model(**inputs)
    return int(counter.get_total_flops())


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
