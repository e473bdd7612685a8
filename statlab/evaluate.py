"""Evaluation of dense and pruned models (DESIGN §4); nothing here prunes.

Encoders: STS-B dev Spearman of cosine similarities of mean-pooled embeddings,
and SST-2 / MRPC dev metrics of a linear probe fitted on the *dense* model's
features and kept fixed while the encoder is pruned. Decoders: perplexity over
non-overlapping token windows. Efficiency: parameters, measured FLOPs, latency.

Functions that run the model put it in eval mode for their duration and restore
the previous mode; loops over many batches show a tqdm bar, which
``disable_progress=True`` hides (``None``, the default, hides it off a terminal).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from scipy import stats
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from statlab import data

EVAL_TASKS = ("stsb", "sst2", "mrpc")
PROBE_TASKS = ("sst2", "mrpc")

# Ridge penalties chosen by 5-fold cross-validation on the *training* splits (dense
# all-MiniLM-L6-v2 features; 6000 SST-2 / all 3668 MRPC examples), never on dev.
DEFAULT_L2 = {"sst2": 0.3, "mrpc": 1.0}

_PROBE_FORMAT = "statlab.probe/1"
# Features whose spread is below this fraction of the largest one are constant: all-MiniLM's
# last LayerNorm has two gains of ~1e-32, and dividing by their ~1e-32 spread (0 for u * v)
# would turn rounding noise into O(1) features (or NaN).
_CONSTANT_FEATURE = 1e-6
_MAX_LENGTH = 128  # DESIGN §4: encoder inputs are truncated at 128 tokens


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
        path = Path(path)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(handle)
        try:
            save_file(self.tensors(), tmp, metadata={"probe": json.dumps(self.metadata())})
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Probe:
        """Read a file written by :meth:`save`."""
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open is not iterable)
        if "probe" not in header:
            raise ValueError(f"{path} holds no probe metadata; write probes with Probe.save.")
        return cls.from_state(tensors, json.loads(header["probe"]))


def mean_pooled_embeddings(model, batches, *, disable_progress: bool | None = None) -> torch.Tensor:
    """Mask-aware mean of the last hidden states: one embedding per text.

    ``e_s = sum_t m_st h_st / sum_t m_st`` with ``h = last_hidden_state (B, T, d)``
    and ``m = attention_mask (B, T)``, so padding never counts.

    Parameters
    ----------
    model : transformers encoder returning ``last_hidden_state``
    batches : iterable of dict
        From :func:`statlab.data.tokenize_batches`; each has ``attention_mask``.
    disable_progress : bool or None

    Returns
    -------
    Tensor of float32 on the CPU, shape (S, d)
        ``S`` the texts of all batches, in order.
    """
    pooled = []
    with _eval_mode(model), torch.inference_mode():
        for batch in tqdm(batches, desc="embed", unit="batch", disable=disable_progress):
            if "attention_mask" not in batch:
                raise ValueError(
                    "a batch without attention_mask: mean pooling needs it to skip padding; "
                    "build batches with statlab.data.tokenize_batches."
                )
            inputs = _model_inputs(model, batch)
            hidden = model(**inputs).last_hidden_state.float()  # (B, T, d)
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled.append(((hidden * mask).sum(1) / mask.sum(1).clamp_min(1)).cpu())  # (B, d)
    if not pooled:
        raise ValueError("no batches to embed: pass at least one text")
    return torch.cat(pooled)  # (S, d)


STSB_HALVES = ("tune", "report")


def stsb_spearman(
    model,
    tokenizer,
    *,
    limit: int | None = None,
    half: str | None = None,
    batch_size: int = 64,
    disable_progress: bool | None = None,
) -> dict:
    """STS-B dev correlation of embedding cosine similarity with the gold scores.

    Parameters
    ----------
    model, tokenizer : transformers encoder and its tokenizer
    limit : int, optional
        Score only ``limit`` pairs spread evenly over the 1500 (all by default).
    half : {"tune", "report"}, optional
        The even-numbered pairs (``"tune"``: where statlab chooses its defaults)
        or the odd-numbered ones (``"report"``: never looked at while tuning);
        750 pairs each. STS-B has no other labelled split offline.
    batch_size : int
    disable_progress : bool or None

    Returns
    -------
    dict
        ``spearman`` and ``pearson`` (floats) and ``n`` (pairs scored).
    """
    pairs = data.load_task("stsb", "validation")
    if half is not None:
        if half not in STSB_HALVES:
            raise ValueError(f"half must be one of {STSB_HALVES} or None, got {half!r}")
        pairs = pairs.select(range(STSB_HALVES.index(half), len(pairs), 2))
    pairs = _spread_rows(pairs, limit)
    u, v = _embed_pairs(model, tokenizer, pairs, batch_size, disable_progress)  # (S, d) each
    cosine = F.cosine_similarity(u, v, dim=-1).numpy()  # (S,)
    gold = np.asarray(pairs["label"][:], dtype=np.float64)  # (S,)
    return {
        "spearman": float(stats.spearmanr(cosine, gold).statistic),
        "pearson": float(stats.pearsonr(cosine, gold).statistic),
        "n": len(gold),
    }


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


def evaluate_task(
    model,
    tokenizer,
    task: str,
    *,
    probe: Probe | None = None,
    limit: int | None = None,
    batch_size: int = 64,
    disable_progress: bool | None = None,
) -> dict:
    """Metrics of an encoder on one task: ``stsb``, or ``sst2`` / ``mrpc`` with a probe.

    Parameters
    ----------
    model, tokenizer : transformers encoder and its tokenizer
    task : {"stsb", "sst2", "mrpc"}
    probe : Probe, optional
        Required for ``sst2`` and ``mrpc``; fitted on the dense model.
    limit : int, optional
        Evaluate only ``limit`` dev examples spread evenly over the set.
    batch_size : int
    disable_progress : bool or None

    Returns
    -------
    dict
        ``task`` and the metrics of :func:`stsb_spearman` or :func:`probe_metrics`.
    """
    options = {"limit": limit, "batch_size": batch_size, "disable_progress": disable_progress}
    if task == "stsb":
        return {"task": task, **stsb_spearman(model, tokenizer, **options)}
    if task not in PROBE_TASKS:
        raise ValueError(
            f"unknown task {task!r}; evaluate_task supports {', '.join(EVAL_TASKS)}. For "
            f"WikiText-2 use perplexity(model, statlab.data.token_windows(tokenizer))."
        )
    if probe is None:
        raise ValueError(
            f"task {task!r} needs a probe fitted on the dense model: "
            f"probe = fit_probe(dense_model, tokenizer, {task!r})"
        )
    if probe.task != task:
        raise ValueError(f"the probe was fitted for {probe.task!r}, not {task!r}")
    return {"task": task, **probe_metrics(model, tokenizer, probe, **options)}


def perplexity(
    model, windows: torch.Tensor, *, batch_size: int = 1, disable_progress: bool | None = None
) -> dict:
    """Perplexity of a causal LM over independent token windows (DESIGN §4).

    ``exp(sum_w sum_{t>=1} -log p(x_wt | x_w<t) / (W (T - 1)))``: each window is
    scored on its own (no context from the previous one), so ``T - 1`` tokens
    per window are predicted.

    Parameters
    ----------
    model : transformers causal LM returning ``logits (B, T, V)``
    windows : Tensor of int64, shape (W, T)
        From :func:`statlab.data.token_windows`.
    batch_size : int
        Windows per forward pass.
    disable_progress : bool or None

    Returns
    -------
    dict
        ``perplexity`` (float), ``tokens`` (predicted tokens, ``W (T - 1)``)
        and ``windows`` (``W``).
    """
    if windows.ndim != 2 or windows.shape[0] < 1 or windows.shape[1] < 2:
        raise ValueError(
            f"windows must have shape (W, T) with W >= 1 and T >= 2, got {tuple(windows.shape)}; "
            f"build them with statlab.data.token_windows."
        )
    device = _device(model)
    nll = torch.zeros((), dtype=torch.float64)
    chunks = windows.split(batch_size)
    with _eval_mode(model), torch.inference_mode():
        for chunk in tqdm(chunks, desc="perplexity", unit="batch", disable=disable_progress):
            ids = chunk.to(device)  # (B, T)
            logits = model(input_ids=ids, use_cache=False).logits  # (B, T, V)
            targets = ids[:, 1:].reshape(-1)  # (B (T - 1),)
            scores = logits[:, :-1].reshape(targets.numel(), -1).float()  # (B (T - 1), V)
            nll += F.cross_entropy(scores, targets, reduction="sum").double().cpu()
    count, length = windows.shape
    tokens = count * (length - 1)
    return {"perplexity": math.exp(nll.item() / tokens), "tokens": tokens, "windows": count}


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


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def _check_probe_task(task: str) -> None:
    if task not in PROBE_TASKS:
        raise ValueError(
            f"no probe for task {task!r}; probes exist for {', '.join(PROBE_TASKS)} "
            f"(STS-B is scored without one by stsb_spearman)."
        )


def _embed_texts(model, tokenizer, texts, batch_size, disable_progress) -> torch.Tensor:
    """Embeddings ``(S, d)`` of ``texts``, batched by token count to cut padding."""
    texts = list(texts)
    encoded = tokenizer(texts, truncation=True, max_length=_MAX_LENGTH)["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    batches = data.tokenize_batches(
        tokenizer, [texts[i] for i in order], max_length=_MAX_LENGTH, batch_size=batch_size
    )
    sorted_embeddings = mean_pooled_embeddings(model, batches, disable_progress=disable_progress)
    embeddings = torch.empty_like(sorted_embeddings)
    embeddings[order] = sorted_embeddings
    return embeddings  # (S, d)


def _embed_pairs(model, tokenizer, rows, batch_size, disable_progress):
    """Embeddings ``u, v (S, d)`` of the ``sentence1`` and ``sentence2`` columns."""
    texts = rows["sentence1"][:] + rows["sentence2"][:]
    both = _embed_texts(model, tokenizer, texts, batch_size, disable_progress)  # (2 S, d)
    return both[: len(rows)], both[len(rows) :]


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
