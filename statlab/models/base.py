"""What an adapter tells the rest of statlab about a model family.

An adapter says where each layer's prunable modules are, by attribute path,
and how to shrink the attention module's bookkeeping. Capture, the driver and
plans go through it and never touch a model's internals themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Block:
    """One transformer layer's prunable parts, as attribute paths from the model root.

    Attributes
    ----------
    index : int
    attention : str
        The module that owns the head-count attributes.
    attn_in : tuple of str
        Linear maps whose output rows belong to units (query, key, value).
    attn_out : str
        Output map ``W_O``: its input is the context, ``unit_size`` columns a unit.
    mlp_in : tuple of str
        ``W1`` (BERT) or ``Wg, Wu`` (Llama): rows are neurons.
    mlp_out : str
        ``W2`` / down projection: its input is ``Z``.
    units, unit_size : int
        Attention units (heads, or KV groups) and context columns per unit.
    head_dim : int
    heads_per_unit : int
        Query heads per unit (1 for MHA).
    """

    index: int
    attention: str
    attn_in: tuple[str, ...]
    attn_out: str
    mlp_in: tuple[str, ...]
    mlp_out: str
    units: int
    unit_size: int
    head_dim: int
    heads_per_unit: int = 1


class ZeroAttention(nn.Module):
    """Stands in for an attention block whose every unit was removed.

    Returns the output map's bias (or zeros) for every token, as the pruned
    block would: ``context = 0``, ``y = 0 @ W_O^T + b_O``.
    """

    def __init__(self, hidden: int, bias: torch.Tensor | None, returns_tuple: bool = True):
        super().__init__()
        self.hidden = hidden
        self.returns_tuple = returns_tuple
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, hidden_states, *args, **kwargs):
        out = hidden_states.new_zeros(*hidden_states.shape[:-1], self.hidden)
        if self.bias is not None:
            out = out + self.bias
        return (out, None) if self.returns_tuple else out


class Adapter:
    """Base class: one subclass per model family (see :mod:`statlab.models`)."""

    model_types: tuple[str, ...] = ()
    norm_position = "post"  # "post" (BERT) or "pre" (Llama): picks the layer weighting
    gated = False

    def blocks(self, model) -> list[Block]:
        raise NotImplementedError

    def hidden_size(self, model) -> int:
        raise NotImplementedError

    def set_units(self, model, block: Block, kept: int) -> None:
        """Update the attention module's head counts after ``kept`` units remain."""
        raise NotImplementedError

    def remove_attention(self, model, block: Block) -> None:
        """Replace a block's attention by :class:`ZeroAttention` (``k = 0``)."""
        raise NotImplementedError
