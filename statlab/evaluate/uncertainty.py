"""How far a dev-set score could move on another sample of examples: percentile bootstrap intervals.

A score from a few hundred dev examples (STS-B's 750 report pairs, MRPC's 408) is
one draw: another sample of the same size would give another value. The
percentile bootstrap (Efron & Tibshirani, *An Introduction to the Bootstrap*,
1993, ch. 13) resamples the examples with replacement, recomputes the metric on
every resample, and reads the interval off the quantiles of those values.

For two models scored on the *same* examples, the question "is A better than
B?" is about ``metric(A) - metric(B)``: resample the examples once per
replicate, score both models on that resample and take the difference
(``versus=``). That interval is much narrower than the two single intervals
suggest, because both scores move together with the sample.

The resampling is :func:`scipy.stats.bootstrap` (``paired=True``, percentile
method); the named metrics are vectorised over resamples.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable

import numpy as np
from scipy import stats


METRICS = ("spearman", "pearson", "accuracy", "f1")
# Fewer examples than this give percentile intervals that cover badly, and resamples of a
# correlation that are often degenerate (a handful of distinct pairs): refuse them.
MIN_EXAMPLES = 20
# Resamples per scipy batch: bounds memory at (batch, n) arrays, and fixes the random stream.
_BATCH = 500


@dataclasses.dataclass(frozen=True)
class BootstrapInterval:
    """A metric on all examples and its percentile bootstrap interval.

    Attributes
    ----------
    estimate : float
        The metric on the examples as given (for ``versus=``: the difference).
    low, high : float
        The ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the metric
        over the resamples.
    level : float
        Nominal coverage, e.g. 0.95.
    resamples : int
        Bootstrap resamples drawn.
    n : int
        Examples resampled.
    """

    estimate: float
    low: float
    high: float
    level: float
    resamples: int
    n: int

    def __contains__(self, value: float) -> bool:
        """``low <= value <= high``: ``0 in diff`` asks whether a difference could be none."""
        return self.low <= value <= self.high

    def __str__(self) -> str:
        return f"{self.estimate:.4f} [{self.low:.4f}, {self.high:.4f}]"


def bootstrap_interval(
    metric: str | Callable[[np.ndarray, np.ndarray], float],
    predicted,
    gold,
    *,
    versus=None,
    level: float = 0.95,
    resamples: int = 2000,
    rng=0,
) -> BootstrapInterval:
    """Percentile bootstrap interval of a metric over examples, or of a paired difference.

    Each resample draws ``n`` example indices ``i`` with replacement and computes
    ``metric(predicted[i], gold[i])`` — or, with ``versus``,
    ``metric(predicted[i], gold[i]) - metric(versus[i], gold[i])`` on the *same*
    ``i``. The interval is the ``(1 ∓ level) / 2`` quantiles of those values.

    Parameters
    ----------
    metric : {"spearman", "pearson", "accuracy", "f1"} or callable
        ``"spearman"`` / ``"pearson"``: correlation of scores with gold scores
        (STS-B: cosine similarities against human ratings); ``"accuracy"``:
        fraction of ``predicted == gold``; ``"f1"``: F1 of class 1 with labels
        in {0, 1} (MRPC's "equivalent"). A callable ``metric(predicted, gold)
        -> float`` is called once per resample on 1-D arrays.
    predicted : array_like, shape (n,)
        Model A's prediction (score or label) per example.
    gold : array_like, shape (n,)
        The gold score or label per example.
    versus : array_like, shape (n,), optional
        Model B's predictions on the same examples, in the same order: the
        interval is then of ``metric(A) - metric(B)``.
    level : float
        Nominal coverage, in (0, 1).
    resamples : int
        Resamples; at least ``10 / (1 - level)`` so that each tail holds 5 of them.
    rng : numpy.random.Generator or int or None
        Source of the resampling (the default seed 0 makes a reported interval
        reproducible).

    Returns
    -------
    BootstrapInterval

    Raises
    ------
    ValueError
        Arrays that are not 1-D, of different lengths, shorter than
        :data:`MIN_EXAMPLES`, or not finite; labels outside {0, 1} for
        ``"f1"``; an unknown metric; ``level`` outside (0, 1) or too few
        ``resamples``; a metric undefined on the examples or on some resample
        (a correlation of constant scores).
    """
    rng = np.random.default_rng(rng)
    score = _metric(metric)
    arrays = {"predicted": predicted, "gold": gold} | ({} if versus is None else {"versus": versus})
    arrays = _check_arrays(arrays, metric)
    _check_settings(level, resamples)
    if versus is None:
        samples = (arrays["predicted"], arrays["gold"])

        def statistic(a, g, axis=-1):
            return score(a, g)
    else:
        samples = (arrays["predicted"], arrays["versus"], arrays["gold"])

        def statistic(a, b, g, axis=-1):
            return score(a, g) - score(b, g)

    estimate = float(statistic(*samples))
    if not np.isfinite(estimate):
        raise ValueError(f"the metric {_name(metric)} is undefined on these examples (a correlation of "
                         f"constant scores?): nothing to bootstrap")
    with warnings.catch_warnings():  # a degenerate distribution is reported below, or is a true [0, 0]
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap(samples, statistic, n_resamples=resamples, batch=_BATCH,
                                 vectorized=not callable(metric), paired=True, confidence_level=level,
                                 method="percentile", rng=rng)
    undefined = int(np.sum(~np.isfinite(result.bootstrap_distribution)))
    if undefined:
        raise ValueError(f"{undefined} of {resamples} resamples gave an undefined {_name(metric)} "
                         f"(constant scores in a resample): use more examples")
    low, high = result.confidence_interval
    return BootstrapInterval(estimate, float(low), float(high), float(level), int(resamples),
                             len(arrays["gold"]))


def _metric(metric):
    """The vectorised metric ``f(predicted (..., n), gold (..., n)) -> (...)`` of a name, or a callable."""
    if callable(metric):
        return lambda a, g: float(metric(a, g))
    named = {"spearman": _spearman, "pearson": _pearson, "accuracy": _accuracy, "f1": _f1}
    if metric not in named:
        raise ValueError(f"unknown metric {metric!r}: name one of {', '.join(METRICS)} or pass a callable "
                         f"metric(predicted, gold) -> float")
    return named[metric]


def _name(metric) -> str:
    return getattr(metric, "__name__", "metric") if callable(metric) else repr(metric)


def _check_arrays(arrays: dict, metric) -> dict[str, np.ndarray]:
    out = {}
    for name, values in arrays.items():
        values = np.asarray(values)
        if values.ndim != 1:
            raise ValueError(f"{name} must be 1-D, one value per example; got shape {values.shape}")
        if values.dtype.kind not in "biuf":
            raise ValueError(f"{name} must be numbers (scores or integer labels), got dtype {values.dtype}")
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{name} holds {int(np.sum(~np.isfinite(values)))} NaN or infinite values")
        out[name] = values
    lengths = {name: len(values) for name, values in out.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"one value per example in each array, in the same order; got lengths {lengths}")
    n = lengths["gold"]
    if n < MIN_EXAMPLES:
        raise ValueError(f"{n} examples: a bootstrap interval needs at least {MIN_EXAMPLES} "
                         f"(fewer give intervals that cover badly)")
    if metric == "f1":
        for name, values in out.items():
            if not np.all((values == 0) | (values == 1)):
                raise ValueError(f"f1 is of class 1 with labels 0 and 1; {name} holds "
                                 f"{sorted(set(np.unique(values).tolist()) - {0, 1})[:5]}")
    return out


def _check_settings(level: float, resamples: int) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level={level} must be in (0, 1), e.g. 0.95")
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)):
        raise ValueError(f"resamples must be an integer, got {resamples!r}")
    needed = int(np.ceil(10 / (1 - level) - 1e-9))
    if resamples < needed:
        raise ValueError(f"resamples={resamples} is too few for level={level}: each tail needs 5 "
                         f"resamples, so draw at least {needed}")


def _pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(-1, keepdims=True)  # (..., n)
    y = y - y.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x * y).sum(-1) / np.sqrt((x * x).sum(-1) * (y * y).sum(-1))


def _spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # Pearson of the ranks, ties at their average rank: scipy.stats.spearmanr's definition
    return _pearson(stats.rankdata(x, axis=-1), stats.rankdata(y, axis=-1))


def _accuracy(predicted: np.ndarray, gold: np.ndarray) -> np.ndarray:
    return (predicted == gold).mean(-1)


def _f1(predicted: np.ndarray, gold: np.ndarray) -> np.ndarray:
    # 2 TP / (2 TP + FP + FN), 0 when class 1 is neither predicted nor present
    true_pos = ((predicted == 1) & (gold == 1)).sum(-1)
    errors = (predicted != gold).sum(-1)
    denominator = 2 * true_pos + errors
    return np.where(denominator > 0, 2 * true_pos / np.maximum(denominator, 1), 0.0)
