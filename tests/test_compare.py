"""The comparison harness: table and plot from a result, bad input; one real run (marked `weights`)."""

from __future__ import annotations

import json
import os

import pytest

from statlab import cli, compare

from .conftest import HAS_MINILM


def fake_result(task="stsb"):
    key = compare.HEADLINE[task][0]
    rows = [{"method": m, "budget": b, "metrics": {key: v}, "macs": 1.0, "params": 1, "prune_seconds": 1.0,
             "kept": {}} for m, b, v in (("stat", 0.8, 0.86), ("stat", 0.5, 0.84), ("random", 0.8, 0.7),
                                          ("random", 0.5, 0.5))]
    return {"model": "m", "task": task, "calibration": {"tokens": 10}, "dense": {"metrics": {key: 0.87}},
            "results": rows}


def test_table_has_a_row_per_budget_and_a_column_per_method():
    lines = compare.table(fake_result()).splitlines()
    assert "spearman (higher is better); dense 0.8700" in lines[0]
    assert lines[1].split("|")[1].strip() == "stat" and lines[1].split("|")[2].strip() == "random"
    assert lines[3].startswith("     0.80") and "0.8600" in lines[3] and "0.7000" in lines[3]
    assert lines[4].startswith("     0.50") and "0.8400" in lines[4] and "0.5000" in lines[4]


def test_table_of_another_metric():
    result = fake_result()
    for row, value in zip(result["results"], (0.61, 0.62, 0.63, 0.64)):
        row["metrics"]["pearson"] = value
    result["dense"]["metrics"]["pearson"] = 0.9
    lines = compare.table(result, metric="pearson").splitlines()
    assert "pearson (higher is better); dense 0.9000" in lines[0]
    assert "0.6100" in lines[3] and "0.6300" in lines[3] and "0.6200" in lines[4] and "0.6400" in lines[4]
    with pytest.raises(ValueError, match="no metric 'accuracy'"):
        compare.table(result, metric="accuracy")


def test_plot_is_written(tmp_path):
    path = compare.plot(fake_result("wikitext2"), tmp_path / "p.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv,message", [
    (["--methods", "stat,nope"], "unknown methods ['nope']"),
    (["--budgets", "0.5,1.5"], "MAC budgets must lie in (0, 1]"),
])
def test_bad_input_is_refused(argv, message, capsys):
    assert cli.main(["compare", "--model", "minilm", "--task", "stsb", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.weights
@pytest.mark.skipif(not HAS_MINILM or not os.environ.get("STATLAB_DATA_DIR"), reason="needs MiniLM and the data")
def test_compare_on_minilm_and_resume_from_its_checkpoint(tmp_path, capsys):
    plot, checkpoint = tmp_path / "cmp.png", tmp_path / "cmp.json"
    common = ["compare", "--model", "minilm", "--task", "stsb", "--budgets", "0.6", "--calibration-size", "64",
              "--checkpoint", str(checkpoint), "--json"]
    assert cli.main([*common, "--methods", "stat,random", "--limit", "100", "--plot", str(plot)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [(r["method"], r["budget"]) for r in result["results"]] == [("stat", 0.6), ("random", 0.6)]
    assert all(r["macs"] <= 0.6 * result["dense"]["macs"] for r in result["results"])
    assert set(result["results"][0]) >= {"method", "budget", "metrics", "macs", "params", "prune_seconds"}
    assert result["command"].startswith("statlab compare --model minilm")
    assert plot.is_file()
    assert json.loads(checkpoint.read_text()) == result  # the command included

    # resumed: the finished runs are kept as they were, only the new method runs
    assert cli.main([*common, "--methods", "stat,random,magnitude", "--limit", "100"]) == 0
    out = capsys.readouterr()
    resumed = json.loads(out.out)
    assert "resuming" in out.err and "2 runs done" in out.err
    assert resumed["results"][:2] == result["results"]
    assert [r["method"] for r in resumed["results"]] == ["stat", "random", "magnitude"]

    # another evaluation setting is another comparison: refused, the file left alone
    assert cli.main([*common, "--methods", "stat", "--limit", "50"]) == 2
    assert "holds another comparison (different evaluation)" in capsys.readouterr().err
    assert json.loads(checkpoint.read_text())["results"] == resumed["results"]


def test_cli_method_names_are_the_registered_methods():
    from statlab.cli import METHOD_NAMES
    from statlab.methods import METHODS

    assert set(METHOD_NAMES) == set(METHODS)


def test_configured_methods_are_compared_under_their_labels(monkeypatch):
    """A PruningMethod instance runs as configured and is listed by its label (no model loading: patched)."""
    import statlab
    from statlab.methods import SlimLLM

    from .test_prune import batches, tiny_bert

    calls = []
    real_prune = statlab.prune

    def prune(model, calibration, **options):
        calls.append(options["method"])
        return real_prune(model, calibration, **options)

    dense = tiny_bert()
    monkeypatch.setattr("statlab.models.loading.load_model", lambda name, **options: (dense, None))
    monkeypatch.setattr("statlab.calibration.calibration_batches",
                        lambda tokenizer, task, **kw: (batches(), {"examples": 6, "source": "x", "tokens": 1}))
    monkeypatch.setattr("statlab.evaluate.task_metrics", lambda *a, **kw: {"spearman": 0.5})
    monkeypatch.setattr("statlab.evaluate.check_task", lambda *a, **kw: None)
    monkeypatch.setattr(statlab, "prune", prune, raising=False)
    configured = SlimLLM(intercept=False)
    result = compare.compare("tiny", "stsb", ["random", configured], [0.6], say=lambda *a: None)
    assert [r["method"] for r in result["results"]] == ["random", "slimllm (no intercept)"]
    assert calls[0] == "random" and calls[1] is configured
    with pytest.raises(ValueError, match="share a label"):
        compare.compare("tiny", "stsb", [SlimLLM(), "slimllm"], [0.6], say=lambda *a: None)
