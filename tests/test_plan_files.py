"""Plans on disk: never lose a user's file, crash-safe saves, damaged and tampered plans refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest
import torch
import transformers
from safetensors.torch import save_file

import statlab
from statlab import plan as plan_module
from statlab.files import TEMP_PREFIX
from statlab.plan import OutputLocationError, PlanError, PlanMismatchError, PruningPlan, check_output_dir

from .test_prune import batches, copy_of, hidden, tiny_bert


@pytest.fixture(scope="module")
def dense():
    return tiny_bert()


@pytest.fixture(scope="module")
def plans(dense):
    """Two different plans of the same base model (50% and 80% of the MACs)."""
    return [statlab.prune(copy_of(dense), batches(), mac_fraction=f, base="tiny") for f in (0.5, 0.8)]


def snapshot(directory):
    """Every file below ``directory`` with its bytes and mode, and every directory's mode."""
    out = {}
    for root, dirs, files in os.walk(directory):
        out[root] = os.stat(root).st_mode
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[path] = (f.read(), os.stat(path).st_mode)
    return out


def listing(directory):
    return sorted(p.name for p in directory.iterdir())


# --- data loss -------------------------------------------------------------------------------------------

def test_a_directory_that_is_not_a_plan_is_left_untouched(plans, tmp_path):
    target = tmp_path / "mine"
    (target / "sub").mkdir(parents=True)
    (target / "notes.txt").write_text("keep me")
    (target / "sub" / "data.bin").write_bytes(b"\x00\x01")
    os.chmod(target, 0o750)
    before = snapshot(target)
    with pytest.raises(OutputLocationError, match="holds no statlab plan"):
        plans[0].save(target)
    assert snapshot(target) == before


def test_a_file_is_never_replaced_by_a_plan(plans, tmp_path):
    target = tmp_path / "results.csv"
    target.write_text("a,b\n1,2\n")
    with pytest.raises(OutputLocationError, match="is a file"):
        plans[0].save(target)
    assert target.read_text() == "a,b\n1,2\n" and listing(tmp_path) == ["results.csv"]


def test_empty_directory_and_existing_plan_are_written(plans, tmp_path):
    target = tmp_path / "empty"
    target.mkdir()
    plans[0].save(target)
    (target / "plan.png").write_bytes(b"png")  # what the CLI writes beside a plan stays
    plans[1].save(target)
    assert listing(target) == ["plan.json", "plan.png", "weights.safetensors"]
    assert PruningPlan.load(target).meta["budget"] == plans[1].meta["budget"]


def test_unwritable_location_is_refused_before_work(tmp_path):
    if os.geteuid() == 0:
        # root writes anywhere; a location below a file cannot be created by anyone
        (tmp_path / "file").write_text("x")
        with pytest.raises(OutputLocationError, match="is a file"):
            check_output_dir(tmp_path / "file" / "plan")
    else:
        locked = tmp_path / "ro"
        locked.mkdir(mode=0o500)
        with pytest.raises(OutputLocationError, match="not writable"):
            check_output_dir(locked / "plan")


# --- crash safety and concurrency ---------------------------------------------------------------------------

@pytest.mark.parametrize("failing_call", [1, 2])
def test_a_failed_save_leaves_the_old_plan_and_no_debris(plans, tmp_path, monkeypatch, failing_call):
    target = tmp_path / "p"
    plans[0].save(target)
    calls = {"n": 0}
    real = plan_module.atomic_write

    def flaky(path, content):
        calls["n"] += 1
        if calls["n"] == failing_call:
            raise OSError(28, "No space left on device")
        return real(path, content)

    monkeypatch.setattr(plan_module, "atomic_write", flaky)
    with pytest.raises(OSError, match="No space"):
        plans[1].save(target)
    assert PruningPlan.load(target).meta["budget"] == plans[0].meta["budget"]
    monkeypatch.setattr(plan_module, "atomic_write", real)
    plans[1].save(target)
    assert listing(target) == ["plan.json", "weights.safetensors"]
    assert listing(tmp_path) == ["p"]
    assert PruningPlan.load(target).meta["budget"] == plans[1].meta["budget"]


def test_killed_saves_always_leave_a_loadable_plan(plans, tmp_path):
    """A process saving in a loop is killed at varying moments; the plan always loads, then no debris."""
    target = tmp_path / "p"
    for i, p in enumerate(plans):
        p.save(tmp_path / f"src{i}")
    plans[0].save(target)
    script = textwrap.dedent(f"""
        import sys
        from statlab.plan import PruningPlan
        plans = [PruningPlan.load({str(tmp_path / 'src0')!r}), PruningPlan.load({str(tmp_path / 'src1')!r})]
        print("ready", flush=True)
        i = 0
        while True:
            plans[i % 2].save({str(target)!r})
            i += 1
    """)
    budgets = [p.meta["budget"] for p in plans]
    for delay in (0.05, 0.13, 0.31):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        threading.Event().wait(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert PruningPlan.load(target).meta["budget"] in budgets
    plans[1].save(target)
    assert listing(target) == ["plan.json", "weights.safetensors"]


def test_readers_never_miss_the_plan_and_writers_do_not_collide(plans, tmp_path):
    target = tmp_path / "p"
    plans[0].save(target)
    stop, errors, reads = threading.Event(), [], [0]
    budgets = [p.meta["budget"] for p in plans]

    def read():
        while not stop.is_set():
            try:
                assert PruningPlan.load(target).meta["budget"] in budgets
                reads[0] += 1
            except Exception as error:  # noqa: BLE001 - every failure counts
                errors.append(repr(error))

    def write(which):
        try:
            for _ in range(40):
                plans[which].save(target)
        except Exception as error:  # noqa: BLE001
            errors.append(repr(error))

    reader = threading.Thread(target=read)
    writers = [threading.Thread(target=write, args=(w,)) for w in (0, 1)]
    reader.start()
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    reader.join()
    assert errors == [] and reads[0] > 0
    assert listing(target) == ["plan.json", "weights.safetensors"]


# --- damaged plan files ---------------------------------------------------------------------------------------

def saved(plan, tmp_path):
    return plan.save(tmp_path / "p")


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must hold a JSON object"),
    ('{"format": 2}', "lacks meta, layers"),
    ('{"format": 99, "meta": {}, "layers": []}', "plan format 99"),
])
def test_damaged_plan_json_is_named(plans, tmp_path, content, message):
    directory = saved(plans[0], tmp_path)
    (directory / "plan.json").write_text(content)
    with pytest.raises(PlanError, match=message) as info:
        PruningPlan.load(directory)
    assert "plan.json" in str(info.value)


def test_plan_json_as_directory_and_plan_path_as_file(plans, tmp_path):
    directory = saved(plans[0], tmp_path)
    (directory / "plan.json").unlink()
    (directory / "plan.json").mkdir()
    with pytest.raises(PlanError, match="is a directory"):
        PruningPlan.load(directory)
    (tmp_path / "f").write_text("x")
    with pytest.raises(PlanError, match="is a file"):
        PruningPlan.load(tmp_path / "f")
    with pytest.raises(PlanError, match="does not exist"):
        PruningPlan.load(tmp_path / "nowhere")


def test_truncated_or_replaced_weights_are_named(plans, tmp_path):
    directory = saved(plans[0], tmp_path)
    weights = directory / "weights.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(PlanError, match="weights.safetensors does not match"):
        PruningPlan.load(directory, attempts=2)
    tensors = dict(plans[0].tensors)
    tensors.pop("layer.1.mlp_out.weight")
    save_file(tensors, weights)
    with pytest.raises(PlanError, match="does not match"):
        PruningPlan.load(directory, attempts=2)
    # a format-1 plan (no hash recorded) is checked for the tensors themselves
    document = json.loads((directory / "plan.json").read_text())
    document["format"] = 1
    document.pop("weights")
    (directory / "plan.json").write_text(json.dumps(document))
    with pytest.raises(PlanError, match="lack layer.1.mlp_out.weight"):
        PruningPlan.load(directory)
    weights.write_bytes(b"\x07" * 40)
    with pytest.raises(PlanError, match="not a readable safetensors file"):
        PruningPlan.load(directory)
    weights.unlink()
    with pytest.raises(PlanError, match="weights.safetensors is missing"):
        PruningPlan.load(directory, attempts=2)


# --- tampered plans: validated against the model, nothing applied on error -----------------------------------

def tampered(plan, change):
    p = PruningPlan(json.loads(json.dumps(plan.meta)), json.loads(json.dumps(plan.layers)),
                    {k: v.clone() for k, v in plan.tensors.items()})
    change(p)
    return p


def _shape(p):
    w = p.tensors["layer.0.mlp_out.weight"]
    p.tensors["layer.0.mlp_out.weight"] = w[:, :1].contiguous()
    p.layers[0]["mlp_kept"] = p.layers[0]["mlp_kept"][:1] * 1
    p.tensors["layer.0.attn_out.weight"] = p.tensors["layer.0.attn_out.weight"][:1]  # broadcastable rows


@pytest.mark.parametrize("change, message", [
    (lambda p: p.layers.pop(), "tensors no layer uses: layer.1.attn_out.weight"),
    (lambda p: [p.layers.pop(), p.tensors.pop("layer.1.attn_out.weight"), p.tensors.pop("layer.1.mlp_out.weight")],
     "plan has 1 layers and the model 2"),
    (lambda p: p.layers[1].update(mlp_kept=p.layers[1]["mlp_kept"] + [64]), "outside 0..63"),
    (lambda p: p.layers[1].update(mlp_kept=[-1] + p.layers[1]["mlp_kept"][1:]), "outside 0..63"),
    (lambda p: p.layers[0].update(attn_kept=[0, 0]), "repeats"),
    (lambda p: p.layers[0].update(attn_kept=[0.5]), "integer unit indices"),
    (lambda p: p.layers[0].update(index=1), "expected 0"),
    (lambda p: p.layers[0].update(mlp_units=128), "neurons; the model has"),
    (_shape, r"layer.0.attn_out.weight has shape \(1, "),
    (lambda p: p.tensors["layer.1.mlp_out.weight"].__setitem__((0, 0), float("nan")), "NaN or Inf"),
    (lambda p: p.tensors.update({"layer.9.mlp_out.weight": torch.zeros(1, 1)}), "no layer uses"),
    (lambda p: p.meta.pop("fingerprint"), "meta lacks fingerprint"),
])
def test_tampered_plan_is_refused_and_nothing_applied(plans, dense, change, message):
    bad = tampered(plans[0], change)
    model = copy_of(dense)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PlanError, match=message):
        bad.apply(model)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("path, part", [
    ("encoder.layer.0.attention.self.query.weight", "layer 0"),
    ("embeddings.word_embeddings.weight", "embeddings.word_embeddings"),
    ("encoder.layer.1.output.LayerNorm.bias", "layer 1"),
])
def test_any_changed_base_weight_is_detected_and_named(plans, dense, path, part):
    model = copy_of(dense)
    with torch.no_grad():
        model.get_parameter(path).add_(1e-3)
    with pytest.raises(PlanMismatchError, match=f"weights differ .* in: {part}$"):
        plans[0].apply(model)


def test_dtype_is_told_apart_from_content(plans, dense):
    with pytest.raises(PlanMismatchError, match="made on float32 weights and the model is bfloat16"):
        plans[0].apply(copy_of(dense).to(torch.bfloat16))


def test_load_pruned_converts_after_applying(tmp_path):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64)
    dense = transformers.BertModel(config).eval()  # with its pooler, so the checkpoint holds every tensor
    base = tmp_path / "base"
    dense.save_pretrained(base)
    model = copy_of(dense)
    plan = statlab.prune(model, batches(), mac_fraction=0.5, base=str(base))
    plan.save(tmp_path / "plan")
    reloaded, _, _ = statlab.load_pruned(tmp_path / "plan", dtype=torch.bfloat16)
    assert next(reloaded.parameters()).dtype == torch.bfloat16
    held_out = batches(1, seed=5)[0]
    assert torch.equal(hidden(reloaded, held_out), hidden(model.to(torch.bfloat16), held_out))


def test_non_finite_tensors_are_never_written(plans, tmp_path):
    bad = tampered(plans[0], lambda p: p.tensors.__setitem__("layer.0.attn_out.weight",
                                                              torch.full_like(p.tensors["layer.0.attn_out.weight"],
                                                                              float("inf"))))
    with pytest.raises(PlanError, match="NaN or Inf"):
        bad.save(tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_temporaries_use_our_prefix_only(plans, tmp_path):
    """The cleanup deletes only files of our own naming: a user's dotfile in a plan directory survives."""
    directory = saved(plans[0], tmp_path)
    (directory / ".keep").write_text("user")
    (directory / f"{TEMP_PREFIX}stale").write_text("debris")
    plans[1].save(directory)
    assert listing(directory) == [".keep", "plan.json", "weights.safetensors"]


def test_written_files_get_the_umask_mode_or_keep_their_own(tmp_path):
    from statlab.files import atomic_write

    old = os.umask(0o022)
    try:
        fresh = atomic_write(tmp_path / "fresh.json", "{}")
        assert fresh.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
        kept = tmp_path / "kept.json"
        kept.write_text("{}")
        kept.chmod(0o640)
        atomic_write(kept, "[]")
        assert kept.stat().st_mode & 0o777 == 0o640 and kept.read_text() == "[]"
    finally:
        os.umask(old)
