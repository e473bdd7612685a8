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
    """Stands in for an attention module whose every unit was removed (``k = 0``).

    Keeps the (now zero-width) projections under their original names, so the
    adapter's paths stay valid, and returns what the pruned module would: a
    zero-width context, or ``out(context) = b_O`` when the output map is inside
    the module (``out`` names it).
    """

    def __init__(self, projections: dict[str, nn.Module], out: str | None = None):
        super().__init__()
        for name, module in projections.items():
            self.add_module(name, module)
        self.out = out

    def forward(self, hidden_states, *args, **kwargs):
        context = hidden_states.new_zeros(*hidden_states.shape[:-1], 0)  # (batch, seq, 0)
        return (getattr(self, self.out)(context) if self.out else context), None


class Adapter:
    """Base class: one subclass per model family (see :mod:`statlab.models`)."""

    model_types: tuple[str, ...] = ()
    norm_position = "post"  # "post" (BERT) or "pre" (Llama): picks the layer weighting
    gated = False

    def blocks(self, model) -> list[Block]:
        raise NotImplementedError

    def hidden_size(self, model) -> int:
        raise NotImplementedError

    def layers_path(self, model) -> str:
        """Path of the ``nn.ModuleList`` of transformer blocks."""
        raise NotImplementedError

    def set_units(self, model, block: Block, kept: int) -> None:
        """Update the attention module's head counts after ``kept`` units remain."""
        raise NotImplementedError

    def remove_attention(self, model, block: Block) -> None:
        """Replace a block's attention by :class:`ZeroAttention` (``k = 0``)."""
        raise NotImplementedError
