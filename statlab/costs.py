"""Analytic cost of a model's transformer blocks: MACs and parameters (DESIGN §1.4).

Counted per unit with the cost model of :mod:`statlab.reference.budget`, from
the model's current shapes, so it measures dense and pruned models alike. The
count covers the attention and MLP blocks (the prunable part); embeddings and
layer norms are the same before and after pruning and are left out.
"""

from __future__ import annotations

from statlab.reference import budget as budget_lib

from .models import get_adapter


def module_costs(model, adapter, blocks, kind, seq_len):
    """Per-block ``(attention, MLP)`` :class:`ModuleCost` for ``kind`` in {"macs", "params"}.

    A block in the query-head view (``Block.groups > 0``) costs one query head
    a unit (its ``W_Q`` rows and ``W_O`` columns, its scores) and its key and
    value maps as the fixed cost of keeping any head.
    """
    d = adapter.hidden_size(model)
    costs = []
    for b in blocks:
        q, kv = (1, 0) if b.groups else (b.heads_per_unit, 1)  # query and KV heads of one unit
        if kind == "macs":
            head = budget_lib.head_macs(seq_len, d, b.head_dim, q, kv)
            fixed = budget_lib.head_macs(seq_len, d, b.head_dim, 0, b.groups)
            neuron = budget_lib.neuron_macs(seq_len, d, adapter.gated)
        else:
            head = budget_lib.head_params(d, b.head_dim, q, kv, b.attn_bias)
            fixed = budget_lib.head_params(d, b.head_dim, 0, b.groups, b.attn_bias)
            neuron = budget_lib.neuron_params(d, adapter.gated, b.mlp_bias)
        costs.append((budget_lib.ModuleCost(b.units, head, fixed), budget_lib.ModuleCost(b.mlp_units, neuron)))
    return costs


def block_macs(model, seq_len: int) -> float:
    """MACs of one sequence of ``seq_len`` tokens through all attention and MLP blocks."""
    adapter = get_adapter(model)
    costs = module_costs(model, adapter, adapter.blocks(model), "macs", seq_len)
    return float(sum(c.cost(c.units) for pair in costs for c in pair))
