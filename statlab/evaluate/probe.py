"""A linear probe for SST-2 and MRPC: fitted once on the dense encoder, kept fixed under pruning.

The probe reads standardised mean-pooled embeddings
(:func:`statlab.evaluate.encoders.mean_pooled_embeddings`); pruning changes the
features, never the probe, so its dev metrics measure what pruning lost.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from statlab import data
from statlab.files import atomic_write

from ._common import _spread_rows
from .encoders import _embed_pairs, _embed_texts

PROBE_TASKS = ("sst2", "mrpc")

# Ridge penalties chosen by 5-fold cross-validation on the *training* splits (dense
# all-MiniLM-L6-v2 features; 6000 SST-2 / all 3668 MRPC examples), never on dev.
DEFAULT_L2 = {"sst2": 0.3, "mrpc": 1.0}

_PROBE_FORMAT = "statlab.probe/1"
# Features whose spread is below this fraction of the largest one are constant: all-MiniLM's
# last LayerNorm has two gains of ~1e-32, and dividing by their ~1e-32 spread (0 for u * v)
# would turn rounding noise into O(1) features (or NaN).
_CONSTANT_FEATURE = 1e-6


@dataclasses.dataclass(frozen=True, eq=False)
class Probe:
    """A linear classifier on standardised features of the dense encoder.

    ``logits = ((x - mean) / std) @ weight.T + bias``, with ``x`` the features
    of one example: the mean-pooled embedding ``u (d,)`` for SST-2, and
    ``[u, v, |u - v|, u * v] (4 d,)`` of the two sentences for MRPC.

    Attributes
    ----------
    task : {"sst2", "mrpc"}
    weight : Tensor of float32, shape (C, F)
    bias : Tensor of float32, shape (C,)
    mean, std : Tensor of float32, shape (F,)
        Of the dense model's training features, kept fixed under pruning;
        ``std`` is 1 for features that were constant.
    l2 : float
        Ridge penalty it was fitted with.
    n_train : int
        Training examples it was fitted on.
    seed : int
        Seed of the training sample.
    """

    task: str
    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    l2: float
    n_train: int
    seed: int

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Class scores, shape (S, C), of ``features (S, F)``."""
        if features.shape[-1] != self.weight.shape[1]:
            raise ValueError(
                f"the probe takes {self.weight.shape[1]} features, got {features.shape[-1]}: "
                f"it was fitted on a model of another hidden size; fit one on this model's "
                f"dense version with fit_probe."
            )
        return ((features - self.mean) / self.std) @ self.weight.T + self.bias

    def tensors(self) -> dict[str, torch.Tensor]:
        """The arrays, contiguous on the CPU (a safetensors-compatible dict)."""
        fields = ("weight", "bias", "mean", "std")
        return {name: getattr(self, name).detach().cpu().contiguous() for name in fields}

    def metadata(self) -> dict:
        """Everything else, JSON-serialisable."""
        return {
            "format": _PROBE_FORMAT,
            "task": self.task,
            "l2": self.l2,
            "n_train": self.n_train,
            "seed": self.seed,
        }

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], metadata: dict) -> Probe:
        """Rebuild from :meth:`tensors` and :meth:`metadata`."""
        if metadata.get("format") != _PROBE_FORMAT:
            raise ValueError(
                f"not a statlab probe (format {metadata.get('format')!r}, "
                f"expected {_PROBE_FORMAT!r}); save probes with Probe.save."
            )
        fields = {key: metadata[key] for key in ("task", "l2", "n_train", "seed")}
        arrays = {key: tensors[key] for key in ("weight", "bias", "mean", "std")}
        return cls(**fields, **arrays)

    def save(self, path: str | os.PathLike) -> None:
        """Write one safetensors file, the metadata as JSON in its header (atomically)."""
        metadata = {"probe": json.dumps(self.metadata())}
        atomic_write(path, lambda tmp: save_file(self.tensors(), tmp, metadata=metadata))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Probe:
        """Read a file written by :meth:`save`."""
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open is not iterable)
        if "probe" not in header:
            raise ValueError(f"{path} holds no probe metadata; write probes with Probe.save.")
        return cls.from_state(tensors, json.loads(header["probe"]))


def fit_probe(
    model,
    tokenizer,
    task: str,
    *,
    n_train: int = 4000,
    seed: int = 0,
    l2: float | None = None,
    batch_size: int = 64,
    disable_progress: bool | None = None,
) -> Probe:
    """Fit a linear probe on the dense encoder's features of training examples.

    Minimises ``mean_i CE(softmax(W x_i + b), y_i) + l2/2 ||W||_F^2`` over
    standardised features (multinomial logistic regression, full-batch L-BFGS in
    fp64 from zero: strictly convex, so the result depends only on the sample).

    Parameters
    ----------
    model, tokenizer : the *dense* transformers encoder and its tokenizer
    task : {"sst2", "mrpc"}
    n_train : int
        Training examples, sampled without replacement from the training split
        (all of them if it has fewer: MRPC has 3668).
    seed : int
        Seed of the :class:`numpy.random.Generator` drawing the sample.
    l2 : float, optional
        Ridge penalty on the weights (not the bias); :data:`DEFAULT_L2` of the
        task by default.
    batch_size : int
    disable_progress : bool or None

    Returns
    -------
    Probe
    """
    _check_probe_task(task)
    l2 = DEFAULT_L2[task] if l2 is None else l2
    if n_train < 1 or l2 < 0:
        raise ValueError(f"n_train={n_train} must be at least 1 and l2={l2} non-negative")
    train = data.load_task(task, "train")
    size = min(n_train, len(train))
    picks = np.random.default_rng(seed).choice(len(train), size=size, replace=False)
    rows = train.select(np.sort(picks))
    x = _probe_features(model, tokenizer, task, rows, batch_size, disable_progress)  # (S, F)
    mean, std = x.mean(0), x.std(0)  # (F,)
    std = torch.where(std > _CONSTANT_FEATURE * std.max(), std, torch.ones_like(std))
    labels = torch.as_tensor(rows["label"][:], dtype=torch.long)  # (S,)
    classes = rows.features["label"].num_classes
    weight, bias = _logistic_regression((x - mean) / std, labels, classes, l2)
    return Probe(task, weight, bias, mean, std, l2=l2, n_train=size, seed=seed)


def probe_metrics(
    model,
    tokenizer,
    probe: Probe,
    *,
    limit: int | None = None,
    batch_size: int = 64,
    disable_progress: bool | None = None,
) -> dict:
    """Dev-set metrics of a fixed probe on the (possibly pruned) encoder's features.

    Parameters
    ----------
    model, tokenizer : transformers encoder and its tokenizer
    probe : Probe
        Fitted on the dense model with :func:`fit_probe`.
    limit : int, optional
        Score only ``limit`` dev examples spread evenly over the set.
    batch_size : int
    disable_progress : bool or None

    Returns
    -------
    dict
        SST-2: ``accuracy``, ``n``. MRPC: ``f1`` (of the "equivalent" class),
        ``accuracy``, ``n``.
    """
    _check_probe_task(probe.task)
    rows = _spread_rows(data.load_task(probe.task, "validation"), limit)
    x = _probe_features(model, tokenizer, probe.task, rows, batch_size, disable_progress)
    predicted = probe.logits(x).argmax(-1).numpy()  # (S,)
    gold = np.asarray(rows["label"][:])  # (S,)
    metrics = {"accuracy": float(np.mean(predicted == gold)), "n": len(gold)}
    if probe.task == "mrpc":
        metrics = {"f1": _binary_f1(predicted, gold), **metrics}
    return metrics


def _check_probe_task(task: str) -> None:
    if task not in PROBE_TASKS:
        raise ValueError(
            f"no probe for task {task!r}; probes exist for {', '.join(PROBE_TASKS)} "
            f"(STS-B is scored without one by stsb_spearman)."
        )


def _probe_features(model, tokenizer, task, rows, batch_size, disable_progress) -> torch.Tensor:
    """``u (S, d)`` for SST-2; ``[u, v, |u - v|, u * v] (S, 4 d)`` for MRPC."""
    if task == "sst2":
        return _embed_texts(model, tokenizer, rows["sentence"][:], batch_size, disable_progress)
    u, v = _embed_pairs(model, tokenizer, rows, batch_size, disable_progress)
    return torch.cat([u, v, (u - v).abs(), u * v], dim=-1)


def _logistic_regression(x: torch.Tensor, labels: torch.Tensor, classes: int, l2: float):
    """Weights ``(C, F)`` and bias ``(C,)`` minimising mean cross-entropy + ridge."""
    x = x.double()  # (S, F)
    weight = torch.zeros(classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        max_iter=500,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def objective():
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, labels) + 0.5 * l2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(objective)
    return weight.detach().float(), bias.detach().float()


def _binary_f1(predicted: np.ndarray, gold: np.ndarray) -> float:
    """F1 of class 1; 0 when it is neither predicted nor present."""
    true_pos = int(np.sum((predicted == 1) & (gold == 1)))
    errors = int(np.sum(predicted != gold))
    return 2 * true_pos / (2 * true_pos + errors) if true_pos + errors else 0.0
