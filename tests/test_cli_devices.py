"""GPU and dtype from the command line: --device, --dtype, --precision on prune, eval and compare.

CUDA is simulated where the machine has none (``torch.cuda.is_available`` patched); the one test that
runs on a GPU carries the ``gpu`` marker.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

import statlab
from statlab import cli, corpora
from statlab.evaluate import decoders

from .test_cli_errors import no_loading, one_line_error, run  # noqa: F401 (no_loading: a fixture)
from .test_corpora import prose, tiny_llama_dir, word_tokenizer  # noqa: F401 (tiny_llama_dir: a fixture)
from .test_llama import tiny_llama

HAS_DATA = bool(os.environ.get("STATLAB_DATA_DIR"))
COMMANDS = {
    "prune": ["prune", "--model", "minilm", "--task", "stsb", "--mac-fraction", "0.5", "--out", "unused-plan"],
    "eval": ["eval", "minilm", "--task", "stsb"],
    "compare": ["compare", "--model", "minilm", "--task", "stsb"],
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("extra, fragment", [
    (["--device", "tpu"], "--device: must be cpu, cuda, cuda:N or auto, got 'tpu'"),
    (["--device", "cuda:first"], "--device: must be cpu, cuda, cuda:N or auto, got 'cuda:first'"),
    (["--dtype", "float64"], "--dtype: invalid choice: 'float64'"),
    (["--dtype", "bf16"], "--dtype: invalid choice: 'bf16'"),
    (["--precision", "fp16"], "--precision: invalid choice: 'fp16'"),
])
def test_unknown_devices_dtypes_and_precisions_are_refused(capsys, tmp_path, monkeypatch, no_loading, command,
                                                          extra, fragment):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *COMMANDS[command], *extra)
    assert code == 2 and fragment in err and "Traceback" not in err
    assert not (tmp_path / "unused-plan").exists()


def test_eval_takes_no_fp64_precision(capsys, no_loading):
    code, _, err = run(capsys, "eval", "minilm", "--task", "stsb", "--precision", "fp64")
    assert code == 2 and "--precision: invalid choice: 'fp64'" in err


@pytest.mark.parametrize("command", COMMANDS)
def test_cuda_absent_is_one_line_before_any_work(capsys, tmp_path, monkeypatch, no_loading, command):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:0"):
        code, _, err = run(capsys, *COMMANDS[command], "--device", device)
        assert code == 2
        one_line_error(err, f"--device {device}: CUDA is not available on this machine")
    assert not (tmp_path / "unused-plan").exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_a_cuda_index_past_the_last_device_is_refused(capsys, tmp_path, monkeypatch, no_loading, command):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    code, _, err = run(capsys, *COMMANDS[command], "--device", "cuda:1")
    assert code == 2
    one_line_error(err, "--device cuda:1: this machine has 1 CUDA device (cuda:0)")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    code, _, err = run(capsys, *COMMANDS[command], "--device", "cuda:2")
    one_line_error(err, "this machine has 2 CUDA devices (cuda:0 to cuda:1)")


def test_auto_is_cuda_where_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert cli.resolve_device("auto") == torch.device("cuda")
    assert cli.resolve_device("cuda:0") == torch.device("cuda:0")
    assert cli.resolve_device("cpu") == torch.device("cpu")


def test_window_help_names_the_llama2_protocol(capsys):
    for command in ("prune", "eval", "compare"):
        assert cli.main([command, "--help"]) == 0
        assert "--window 2048 is the Llama-2 protocol" in " ".join(capsys.readouterr().out.split())


# --------------------------------------------------------------------------- perplexity batches

def test_batched_perplexity_equals_one_window_at_a_time(tmp_path):
    model, tokenizer = tiny_llama(), word_tokenizer(tmp_path / "tok")
    corpus = corpora.Corpus("prose", prose(800, seed=2), ())
    batched = decoders.decoder_perplexity(model, tokenizer, window=16, max_tokens=None, corpus=corpus)
    alone = decoders.decoder_perplexity(model, tokenizer, window=16, max_tokens=None, corpus=corpus, batch_size=1)
    assert decoders.CPU_BATCH == 4 and batched["windows"] == 50 > decoders.CPU_BATCH
    assert batched["tokens"] == alone["tokens"] == 50 * 15
    assert batched["perplexity"] == pytest.approx(alone["perplexity"], rel=1e-6)


# --------------------------------------------------------------------------- end to end in bfloat16

def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


@pytest.fixture
def pruned_models(monkeypatch):
    """The models ``statlab.prune`` pruned during the test, in order (the CLI keeps none)."""
    seen, real = [], statlab.driver.prune

    def spy(model, *args, **kwargs):
        plan = real(model, *args, **kwargs)
        seen.append(model)
        return plan

    monkeypatch.setattr(statlab.driver, "prune", spy)
    return seen


def prune_args(model_dir, out, *extra):
    return ["prune", "--model", model_dir, "--task", "wikitext2", "--mac-fraction", "0.8", "--calibration-size", "2",
            "--window", "32", "--out", out, "--json", *extra]


@pytest.mark.skipif(not HAS_DATA, reason="needs STATLAB_DATA_DIR (WikiText-2 validation windows)")
def test_prune_in_bfloat16_on_cpu_reloads_bit_identically(capsys, tmp_path, tiny_llama_dir, pruned_models):
    out = tmp_path / "plan"
    code, stdout, err = run(capsys, *prune_args(tiny_llama_dir, out, "--device", "cpu", "--dtype", "bfloat16"))
    assert code == 0, err
    result = json.loads(stdout)
    assert (result["device"], result["dtype"], result["precision"]) == ("cpu", "bfloat16", "fp64")
    assert result["calibration"]["tokens"] == 64
    [model] = pruned_models
    reloaded, _, plan = statlab.load_pruned(out, dtype=torch.bfloat16)
    assert plan.meta["dtype"] == "bfloat16" and next(reloaded.parameters()).dtype == torch.bfloat16
    ids = torch.randint(4, 96, (2, 32), generator=torch.Generator().manual_seed(0))
    assert torch.equal(logits(model, ids), logits(reloaded, ids))
    # eval reloads the plan in its own dtype, and converts only when asked
    code, stdout, err = run(capsys, "eval", out, "--task", "wikitext2", "--window", "32", "--max-tokens", "64",
                            "--json")
    assert code == 0, err
    assert json.loads(stdout)["dtype"] == "bfloat16"
    code, stdout, err = run(capsys, "eval", out, "--task", "wikitext2", "--window", "32", "--max-tokens", "64",
                            "--dtype", "float32", "--json")
    assert code == 0, err
    assert json.loads(stdout)["dtype"] == "float32"


def test_eval_a_text_file_in_bfloat16_matches_the_library(capsys, tmp_path, tiny_llama_dir):
    path = tmp_path / "essay.txt"
    path.write_text(prose(400, seed=1))
    code, stdout, err = run(capsys, "eval", tiny_llama_dir, "--text-file", path, "--window", "16", "--dtype",
                            "bfloat16", "--device", "auto", "--json")
    assert code == 0, err
    result = json.loads(stdout)
    assert result["dtype"] == "bfloat16" and result["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")
    model, tokenizer = statlab.load_model(str(tiny_llama_dir), dtype=torch.bfloat16)
    expected = decoders.decoder_perplexity(model.to(result["device"]), tokenizer, window=16,
                                           corpus=corpora.read_file(path))
    assert result["metrics"]["perplexity"] == expected["perplexity"]


@pytest.mark.skipif(not HAS_DATA, reason="needs STATLAB_DATA_DIR (WikiText-2 test)")
def test_compare_takes_dtype_and_precision(capsys, tmp_path, tiny_llama_dir, pruned_models):
    calib = tmp_path / "calib.txt"
    calib.write_text(prose(400, seed=3))
    code, stdout, err = run(capsys, "compare", "--model", tiny_llama_dir, "--task", "wikitext2", "--methods",
                            "magnitude", "--budgets", "0.8", "--calibration-size", "4", "--window", "16",
                            "--max-tokens", "64", "--calibration-file", calib, "--dtype", "bfloat16", "--precision",
                            "fp32", "--json")
    assert code == 0, err
    result = json.loads(stdout)
    assert result["dtype"] == "bfloat16" and result["precision"] == "fp32"
    assert result["calibration"]["corpus"]["path"] == str(calib.resolve())
    assert [next(m.parameters()).dtype for m in pruned_models] == [torch.bfloat16]


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_DATA, reason="needs STATLAB_DATA_DIR (WikiText-2 validation windows)")
def test_prune_on_cuda_in_bfloat16_reloads_bit_identically(capsys, tmp_path, tiny_llama_dir, pruned_models):
    out = tmp_path / "plan"
    code, stdout, err = run(capsys, *prune_args(tiny_llama_dir, out, "--device", "cuda", "--dtype", "bfloat16",
                                                "--precision", "tf32"))
    assert code == 0, err
    [model] = pruned_models
    assert next(model.parameters()).device.type == "cuda"
    reloaded, _, _ = statlab.load_pruned(out, dtype=torch.bfloat16)
    ids = torch.randint(4, 96, (2, 32), generator=torch.Generator().manual_seed(0))
    assert torch.equal(logits(model, ids.cuda()), logits(reloaded.cuda(), ids.cuda()))


def test_a_checkpoint_resumes_only_at_its_dtype_and_precision():
    from statlab import compare

    quiet = lambda *parts: None  # noqa: E731
    settings = {"model": "m", "dtype": "float32", "precision": "fp64"}
    old = {"model": "m", "dense": {}, "results": []}  # written before dtype and precision were recorded
    assert compare._resumed(old, "c.json", settings, quiet) is old
    with pytest.raises(ValueError, match=r"different dtype\)"):
        compare._resumed({**old, "dtype": "bfloat16"}, "c.json", settings, quiet)
    with pytest.raises(ValueError, match=r"different precision\)"):
        compare._resumed(old, "c.json", {**settings, "precision": "tf32"}, quiet)
