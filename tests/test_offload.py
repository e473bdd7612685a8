"""Blocks on the compute device only while they run (statlab.offload): same pruning, bounded residency."""

from __future__ import annotations

import copy

import pytest
import torch

import statlab
from statlab.offload import BlocksOnDemand

from .test_llama import tiny_llama, windows


def resident_counts(moves):
    """How many blocks were on the device after each transfer."""
    count, counts = 0, []
    for _, direction in moves:
        count += 1 if direction == "in" else -1
        counts.append(count)
    return counts


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
    with torch.no_grad():
        torch.testing.assert_close(offloaded(input_ids=ids).logits, plain(input_ids=ids).logits, rtol=0, atol=0)
    # 4 blocks × 4 batches in the dense pass, then a few per propagated capture: far fewer than once per batch
    assert 16 <= b.meta["offload"]["transfers"] // 2 <= 16 + 2 * 2 * 4


@pytest.mark.parametrize("resident", [1, 2, 4])
def test_residency_is_bounded_and_everything_goes_home(resident):
    model = tiny_llama(layers=4)
    batches = windows(3)
    with BlocksOnDemand(model, "model.layers", "cpu", resident=resident) as on_demand:
        with torch.no_grad():
            for batch in batches:
                model(**batch, use_cache=False)
    counts = resident_counts(on_demand.moves)
    assert max(counts) <= resident and counts[-1] == 0  # all evicted at the end
    fetched = sum(direction == "in" for _, direction in on_demand.moves)
    # a full forward touches the 4 blocks in a cycle: with room for all they move once, else every batch
    assert fetched == (4 if resident >= 4 else 4 * len(batches))
    assert not any(block._forward_pre_hooks for block in model.model.layers)  # hooks removed


def test_offload_needs_a_device_and_a_device_needs_offload():
    model = tiny_llama()
    with pytest.raises(ValueError, match="needs the compute device"):
        statlab.prune(model, windows(2), sparsity=0.2, offload=True)
    with pytest.raises(ValueError, match="pass offload=True"):
        statlab.prune(model, windows(2), sparsity=0.2, device="meta")
    with pytest.raises(ValueError, match="resident"):
        BlocksOnDemand(model, "model.layers", "cpu", resident=0)
