"""Offloaded and dispatched models (statlab.offload): accelerate's hooks, the same prune, bounded residency."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

import statlab
import statlab.methods
from statlab.offload import OffloadedBlocks, is_dispatched, named_weights

from .test_llama import logits, tiny_llama, windows


def resident_blocks(model):
    """Indices of the blocks with any real (non-meta) parameter."""
    return {i for i, block in enumerate(model.model.layers) if any(p.device.type != "meta" for p in block.parameters())}


def watch_residency(model):
    """Record, at every linear map's forward, which blocks hold real weights; returns (seen list, handles)."""
    seen, handles = [], []
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            handles.append(module.register_forward_pre_hook(lambda m, a: seen.append(resident_blocks(model))))
    return seen, handles


def test_offloaded_prune_is_the_same_prune():
    dense = tiny_llama(layers=4)
    plain, offloaded = copy.deepcopy(dense), copy.deepcopy(dense)
    a = statlab.prune(plain, windows(4), sparsity=0.4, base="tiny")
    b = statlab.prune(offloaded, windows(4), sparsity=0.4, base="tiny", offload=True, device="cpu")
    assert [l["attn_kept"] for l in a.layers] == [l["attn_kept"] for l in b.layers]
    assert [l["mlp_kept"] for l in a.layers] == [l["mlp_kept"] for l in b.layers]
    for name, tensor in a.tensors.items():
        torch.testing.assert_close(b.tensors[name], tensor, rtol=0, atol=0)
    ids = windows(1, seed=5)[0]["input_ids"]
    torch.testing.assert_close(logits(offloaded, ids), logits(plain, ids), rtol=0, atol=0)
    # the model ends where it started: real tensors, no hooks left behind
    assert all(p.device.type == "cpu" for p in offloaded.parameters())
    assert not any(hasattr(m, "_hf_hook") for m in offloaded.modules())
    # 4 blocks × 4 batches stream through the dense pass; the propagated passes run resident blocks only
    assert b.meta["offload"]["streamed_block_runs"] == 16


def test_offloaded_residency_is_bounded():
    model = tiny_llama(layers=4)
    seen, handles = watch_residency(model)
    with OffloadedBlocks(model, "model.layers", "cpu"):
        assert resident_blocks(model) == set()  # every block's weights are off the model between runs
        with torch.no_grad():
            model(**windows(1)[0], use_cache=False)
    for h in handles:
        h.remove()
    assert seen and max(len(s) for s in seen) <= 1  # one module of one block at a time
    assert resident_blocks(model) == {0, 1, 2, 3}


def test_offloaded_prune_holds_at_most_two_blocks():
    model = tiny_llama(layers=4)
    seen, handles = watch_residency(model)
    statlab.prune(model, windows(3), sparsity=0.3, base="tiny", offload=True, device="cpu")
    for h in handles:
        h.remove()
    inside = [s for s in seen if len(s) < 4]  # forwards while offloaded (the model ends with all four real)
    assert inside and max(len(s) for s in inside) <= 2
    assert any(len(s) == 2 for s in inside)  # the block being pruned and the one below it


def dispatched(tmp_path, dense, device_map):
    """``dense`` saved and reloaded by transformers with accelerate's dispatch over ``device_map``."""
    dense.save_pretrained(tmp_path / "dense")
    model = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "dense", device_map=device_map,
                                                          offload_folder=tmp_path / "offload",
                                                          attn_implementation="eager")
    return model.eval()


CPU_AND_DISK = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                "model.layers.1": "disk", "model.layers.2": "disk", "model.layers.3": "cpu",
                "model.norm": "cpu", "lm_head": "cpu"}


def test_dispatched_model_with_blocks_on_disk_is_pruned_in_place(tmp_path):
    dense = tiny_llama(layers=4)
    model = dispatched(tmp_path, copy.deepcopy(dense), CPU_AND_DISK)
    assert is_dispatched(model) and model.model.layers[1].mlp.down_proj.weight.device.type == "meta"
    ids = windows(1, seed=5)[0]["input_ids"]
    torch.testing.assert_close(logits(model, ids), logits(dense, ids), rtol=0, atol=0)
    checkpoint = (tmp_path / "dense" / "model.safetensors").read_bytes()

    reference = copy.deepcopy(dense)
    a = statlab.prune(reference, windows(4), sparsity=0.4, base="tiny")
    b = statlab.prune(model, windows(4), sparsity=0.4, base="tiny")
    assert [l["mlp_kept"] for l in a.layers] == [l["mlp_kept"] for l in b.layers]
    assert [l["attn_kept"] for l in a.layers] == [l["attn_kept"] for l in b.layers]
    for name, tensor in a.tensors.items():
        torch.testing.assert_close(b.tensors[name], tensor, rtol=0, atol=0)
    assert b.meta["device_map"]["model.layers.1"] == "disk"
    # the disk blocks stayed on disk, pruned: meta in the model, new files in the offload folder
    down = model.model.layers[1].mlp.down_proj
    assert down.weight.device.type == "meta" and down.in_features == len(b.layers[1]["mlp_kept"])
    assert (tmp_path / "offload" / "model.layers.1.mlp.down_proj.weight.dat").exists()
    assert (tmp_path / "dense" / "model.safetensors").read_bytes() == checkpoint  # the checkpoint is untouched
    torch.testing.assert_close(logits(model, ids), logits(reference, ids), rtol=0, atol=0)
    # the plan applies to a fresh dispatch of the dense model as to a plain one
    again = dispatched(tmp_path / "again", copy.deepcopy(dense), CPU_AND_DISK)
    b.apply(again)
    torch.testing.assert_close(logits(again, ids), logits(model, ids), rtol=0, atol=0)
    weights = dict(named_weights(again))
    assert weights["model.layers.2.mlp.down_proj.weight"].device.type == "cpu"


def test_dispatched_model_refuses_offload_and_device(tmp_path):
    model = dispatched(tmp_path, tiny_llama(layers=4), CPU_AND_DISK)
    for options in ({"offload": True, "device": "cpu"}, {"device": "cpu"}):
        with pytest.raises(ValueError, match="dispatched by accelerate"):
            statlab.prune(model, windows(2), sparsity=0.2, **options)


def test_offload_needs_a_device_and_a_device_needs_offload():
    model = tiny_llama()
    with pytest.raises(ValueError, match="needs the compute device"):
        statlab.prune(model, windows(2), sparsity=0.2, offload=True)
    with pytest.raises(ValueError, match="pass offload=True"):
        statlab.prune(model, windows(2), sparsity=0.2, device="meta")


@pytest.mark.parametrize("method", sorted(statlab.methods.METHODS))
def test_every_method_prunes_a_dispatched_model_as_a_plain_one(tmp_path, method):
    dense = tiny_llama(layers=4)
    model = dispatched(tmp_path, copy.deepcopy(dense), CPU_AND_DISK)
    a = statlab.prune(copy.deepcopy(dense), windows(4), sparsity=0.3, method=method, base="tiny")
    b = statlab.prune(model, windows(4), sparsity=0.3, method=method, base="tiny")
    assert [l["mlp_kept"] for l in a.layers] == [l["mlp_kept"] for l in b.layers]
    assert [l["attn_kept"] for l in a.layers] == [l["attn_kept"] for l in b.layers]
    for name, tensor in a.tensors.items():
        torch.testing.assert_close(b.tensors[name], tensor, rtol=0, atol=0)


def test_one_placement_check_for_prune_compare_and_evaluate():
    from statlab.offload import check_placement

    check_placement(offload=False, device=None)
    check_placement(offload=True, device="cuda")
    check_placement(offload=False, device=None, placed="device_map")
    with pytest.raises(ValueError, match="needs the compute device"):
        check_placement(offload=True, device=None)
    for offload, device in ((True, "cuda"), (False, "cpu")):
        with pytest.raises(ValueError, match="device_map places the model itself"):
            check_placement(offload=offload, device=device, placed="device_map")
