"""Placement from the command line: --device-map (accelerate's dispatch, blocks on disk) and --offload."""

from __future__ import annotations

import json

import pytest
import torch

import statlab
from statlab.offload import is_dispatched

from .test_cli_devices import pruned_models  # noqa: F401 (a fixture)
from .test_cli_errors import no_loading, one_line_error, run  # noqa: F401 (no_loading: a fixture)
from .test_corpora import prose, tiny_llama_dir  # noqa: F401 (tiny_llama_dir: a fixture)

DISK_MAP = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
            "model.layers.1": "disk", "model.layers.2": "cpu", "model.norm": "cpu", "lm_head": "cpu"}


@pytest.fixture
def disk_map(tmp_path):
    path = tmp_path / "map.json"
    path.write_text(json.dumps(DISK_MAP))
    return path


@pytest.fixture
def calib(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text(prose(600, seed=3))
    return path


def prune_args(model_dir, calib, out, *extra):
    return ["prune", "--model", model_dir, "--task", "wikitext2", "--mac-fraction", "0.7", "--calibration-file",
            calib, "--calibration-size", "4", "--window", "32", "--out", out, "--json", *extra]


def eval_args(plan, text, *extra):
    return ["eval", plan, "--text-file", text, "--window", "16", "--json", *extra]


def test_prune_and_eval_with_blocks_on_disk_match_the_plain_run(capsys, tmp_path, tiny_llama_dir, calib, disk_map,
                                                                pruned_models):
    code, stdout, err = run(capsys, *prune_args(tiny_llama_dir, calib, tmp_path / "plain"))
    assert code == 0, err
    folder = tmp_path / "offload"
    code, stdout, err = run(capsys, *prune_args(tiny_llama_dir, calib, tmp_path / "mapped", "--device-map", disk_map,
                                                "--offload-folder", folder))
    assert code == 0, err
    assert json.loads(stdout)["device"] == "dispatched by accelerate"
    plain, mapped = (statlab.PruningPlan.load(tmp_path / name) for name in ("plain", "mapped"))
    assert is_dispatched(pruned_models[1]) and not is_dispatched(pruned_models[0])
    assert mapped.meta["device_map"]["model.layers.1"] == "disk"
    assert [l["mlp_kept"] for l in plain.layers] == [l["mlp_kept"] for l in mapped.layers]
    assert [l["attn_kept"] for l in plain.layers] == [l["attn_kept"] for l in mapped.layers]
    for name, tensor in plain.tensors.items():
        assert torch.equal(mapped.tensors[name], tensor)
    assert (folder / "model.layers.1.mlp.down_proj.weight.dat").exists()  # the pruned disk block, written there

    text = tmp_path / "held-out.txt"
    text.write_text(prose(300, seed=8))
    scores = []
    for extra in ([], ["--device-map", disk_map], ["--offload", "--device", "cpu"]):
        code, stdout, err = run(capsys, *eval_args(tmp_path / "plain", text, *extra))
        assert code == 0, err
        scores.append(json.loads(stdout))
    assert [s["device"] for s in scores] == ["cpu", "dispatched", "cpu, blocks offloaded"]
    assert scores[1]["metrics"]["perplexity"] == scores[0]["metrics"]["perplexity"]
    assert scores[2]["metrics"]["perplexity"] == scores[0]["metrics"]["perplexity"]
    # the library's loader takes the same map
    model, _, _ = statlab.load_pruned(tmp_path / "plain", device_map=DISK_MAP)
    assert is_dispatched(model) and model.model.layers[1].mlp.down_proj.weight.device.type == "meta"


def test_prune_with_offload_is_the_plain_prune(capsys, tmp_path, tiny_llama_dir, calib, pruned_models):
    for name, extra in (("plain", []), ("offloaded", ["--offload", "--device", "cpu"])):
        code, stdout, err = run(capsys, *prune_args(tiny_llama_dir, calib, tmp_path / name, *extra))
        assert code == 0, err
    plain, offloaded = (statlab.PruningPlan.load(tmp_path / name) for name in ("plain", "offloaded"))
    assert offloaded.meta["offload"]["device"] == "cpu"
    for name, tensor in plain.tensors.items():
        assert torch.equal(offloaded.tensors[name], tensor)
    assert all(p.device.type == "cpu" for p in pruned_models[1].parameters())


@pytest.mark.parametrize("extra, fragment", [
    (["--device-map", "everywhere"], "--device-map: give auto, balanced, balanced_low_0, sequential or a JSON file"),
    (["--device-map", "auto", "--device", "cpu"], "--device-map places the model itself"),
    (["--device-map", "auto", "--offload"], "--device-map places the model itself"),
    (["--offload-folder", "somewhere"], "--offload-folder is where --device-map puts blocks mapped to disk"),
])
def test_bad_placement_is_one_line_before_any_work(capsys, tmp_path, monkeypatch, no_loading, extra, fragment):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "prune", "--model", "minilm", "--task", "stsb", "--mac-fraction", "0.5", "--out",
                       "unused-plan", *extra)
    assert code == 2
    assert fragment in err and "Traceback" not in err
    assert not (tmp_path / "unused-plan").exists()


@pytest.mark.parametrize("content, fragment", [
    ("[1, 2]", "must hold a non-empty JSON object"),
    ("{}", "must hold a non-empty JSON object"),
    ("{not json", "is no JSON device map"),
    ('{"model.layers.0": "tpu"}', "'model.layers.0' -> 'tpu' is no device"),
    ('{"model.layers.0": 7}', "but this machine has"),
    ('{"model.layers.0": true}', "is no device"),
])
def test_a_bad_device_map_file_is_refused(capsys, tmp_path, monkeypatch, no_loading, content, fragment):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    path = tmp_path / "map.json"
    path.write_text(content)
    code, _, err = run(capsys, "eval", "minilm", "--task", "stsb", "--device-map", path)
    assert code == 2 and fragment in err and "Traceback" not in err


def test_compare_takes_offload_but_no_device_map(capsys, tmp_path, no_loading, disk_map):
    code, _, err = run(capsys, "compare", "--model", "minilm", "--task", "stsb", "--device-map", disk_map)
    assert code == 2
    one_line_error(err, "compare copies the dense model for every run and takes no --device-map")
