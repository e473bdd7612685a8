"""What an adapter tells the rest of statlab about a model family.

An adapter says where each layer's prunable modules are, by attribute path,
and how to shrink the attention module's bookkeeping. Capture, the driver,
the costs and plans go through it and never touch a model's internals
themselves (they never name ``q_proj`` or ``intermediate``).

Adding a model family
---------------------
1. Write ``statlab/models/<family>.py`` with a subclass of :class:`Adapter`
   (``bert.py`` and ``llama.py`` are the two shapes: post-LN encoder with the
   output map outside the attention module, pre-LN decoder with it inside).
2. Set the class attributes: ``model_types`` (the ``config.model_type``
   values it serves), ``norm_position`` (``"post"`` or ``"pre"``), ``gated``
   (a gate/up MLP) and ``causal_lm`` (loaded with ``AutoModelForCausalLM``).
3. Implement the five abstract methods: :meth:`~Adapter.layers_path`,
   :meth:`~Adapter.hidden_size`, :meth:`~Adapter.blocks` (one :class:`Block`
   per layer, every field read from the modules' current shapes, so pruned
   models are described as they are; check ``attention_units`` with
   :func:`check_attention_units`), :meth:`~Adapter.set_units` and
   :meth:`~Adapter.remove_attention` (with :class:`ZeroAttention`). A subclass
   missing one cannot be instantiated.
4. Register it: add the class to the tuple in ``statlab/models/__init__.py``;
   ``ADAPTERS`` maps each of its ``model_types`` to it, and ``DECODER_TYPES``
   follows from ``causal_lm``. Short names with offline weights go into
   ``statlab/models/loading.py``.
5. Test it on a tiny random config: copy ``tiny_llama`` (``tests/test_llama.py``)
   or ``tiny_bert`` (``tests/test_prune.py``), add it to ``MODELS`` in
   ``tests/test_adapters.py`` (the ``Block`` fields against the real shapes),
   and copy ``tests/test_llama.py``'s prune tests (budget met,
   STAT beats magnitude, full budget exact, whole-module removal, plan round
   trip, reference backend agrees with fast).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Block:
    """One transformer layer's prunable parts, as attribute paths from the model root.

    Every fact the driver, the costs and the plans need about a layer is here,
    read from the modules' current shapes, so nobody re-derives it from the
    modules (``get_submodule(...).in_features``).

    Attributes
    ----------
    index : int
        Position of the layer in the ``nn.ModuleList`` at ``Adapter.layers_path``.
    attention : str
        The module that owns the head-count attributes. Its output is the
        context (``W_O`` outside it, as in BERT) or ``W_O(context)`` (inside,
        as in Llama), first in a 2-tuple ``(output, attention weights)``.
    attn_in : tuple of str
        Linear maps whose output rows belong to units (query, key, value).
    attn_out : str
        Output map ``W_O``: its input is the context, ``unit_size`` columns a unit.
    mlp_in : tuple of str
        ``W1`` (BERT) or ``Wg, Wu`` (Llama): rows are neurons.
    mlp_out : str
        ``W2`` / down projection: its input is ``Z``.
    mlp : str
        The module whose output is ``Z`` (``W2`` outside it: BERT's
        ``intermediate``) or ``W2(Z)`` (inside: Llama's ``mlp``), as a tensor.
    units : int
        Attention units (heads, or KV groups); ``W_O`` has ``units * unit_size``
        input features.
    unit_size : int
        Context columns per unit: ``heads_per_unit * head_dim``.
    head_dim : int
    mlp_units : int
        MLP width: neurons, the input features of ``mlp_out`` (and the output
        rows of each map in ``mlp_in``).
    attn_bias : bool
        Whether the attention input maps (``attn_in``) carry biases, which
        belong to units (one per row). Qwen2: true, with no bias on ``W_O``.
    mlp_bias : bool
        Whether the MLP input maps (``mlp_in``) carry biases, one per neuron
        (``b1``). The output maps' biases (``b_O``, ``b2``) are not per unit:
        pruning keeps them, and no flag describes them.
    heads_per_unit : int
        Query heads per unit (1 for MHA).
    groups : int
        0 when a unit is a whole KV group (or an MHA head). In the query-head
        view of a GQA layer (``Adapter.blocks(model, attention_units="heads")``)
        the number of KV groups the query-head units fall in: ``attn_in`` then
        holds the query map alone (the key and value maps are kept whole while
        any head is left, and cost :func:`statlab.costs.module_costs`'s fixed
        share), and a layer keeps the same number of query heads in every group.
    """

    index: int
    attention: str
    attn_in: tuple[str, ...]
    attn_out: str
    mlp_in: tuple[str, ...]
    mlp_out: str
    mlp: str
    units: int
    unit_size: int
    head_dim: int
    mlp_units: int
    attn_bias: bool
    mlp_bias: bool
    heads_per_unit: int = 1
    groups: int = 0


ATTENTION_UNITS = ("groups", "heads")
"""What an attention unit is: a whole KV group (an MHA head; the default) or a query head within its group."""


def check_attention_units(attention_units) -> str:
    """``attention_units`` if it is one of :data:`ATTENTION_UNITS`, else a ValueError naming them."""
    if attention_units not in ATTENTION_UNITS:
        raise ValueError(f"attention_units must be one of {ATTENTION_UNITS}, got {attention_units!r}")
    return attention_units


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


class Adapter(ABC):
    """Where a model family keeps its prunable modules: one subclass per family.

    Adapters are stateless; :func:`statlab.models.get_adapter` picks one by
    ``config.model_type``. Every path an adapter returns is relative to the
    model it was given (``model.get_submodule(path)``), which may be the bare
    backbone or a task model around it (``BertForSequenceClassification``,
    ``LlamaForCausalLM``): task heads are left untouched.

    Attributes
    ----------
    model_types : tuple of str
        The ``config.model_type`` values this adapter serves (its registry keys).
    norm_position : {"post", "pre"}
        Where the layer norms sit: picks the layer weighting (post-LN encoders
        by depth, pre-LN decoders by the pivot trend; DESIGN §1.4).
    gated : bool
        The MLP is gated (``down(act(gate(x)) * up(x))``): three maps per neuron.
    causal_lm : bool
        The family is a causal language model, loaded with
        ``AutoModelForCausalLM`` and scored by perplexity (``DECODER_TYPES``).
    """

    model_types: tuple[str, ...] = ()
    norm_position = "post"
    gated = False
    causal_lm = False

    @abstractmethod
    def layers_path(self, model) -> str:
        """Path of the ``nn.ModuleList`` of transformer blocks (``"encoder.layer"``, ``"model.layers"``).

        Blocks ``0 .. L-1`` are its items, in order; layer replay and
        offloading swap and move them as whole modules.
        """

    @abstractmethod
    def hidden_size(self, model) -> int:
        """Width ``d`` of the residual stream: the output features of ``attn_out`` and ``mlp_out``."""

    @abstractmethod
    def blocks(self, model, attention_units: str = "groups") -> list[Block]:
        """One :class:`Block` per transformer layer, in order, read from the current shapes.

        ``attention_units`` (:data:`ATTENTION_UNITS`): ``"heads"`` describes
        each GQA layer with its query heads as units (``Block.groups``);
        families without GQA return the same blocks for both.

        Returns
        -------
        list of Block, length L
            ``blocks[i].index == i``; unit counts, ``mlp_units`` and the bias
            flags describe the model as it is now (dense or pruned, with
            removed modules at zero width).
        """

    @abstractmethod
    def set_units(self, model, block: Block, kept: int) -> None:
        """Update the attention module's head counts after ``kept`` units remain.

        The driver has already cut the projections to ``kept`` units; this
        fixes whatever the attention forward reads instead of the shapes
        (BERT's ``num_attention_heads`` and ``all_head_size``), or nothing.
        """

    @abstractmethod
    def remove_attention(self, model, block: Block) -> None:
        """Replace a block's attention by :class:`ZeroAttention` (``k = 0``).

        The zero-width projections stay under their original names, so
        ``block``'s paths remain valid, and the layer's output is what a
        pruned module with no units computes (the output map's bias, or 0).
        """

    @contextlib.contextmanager
    def attention_maps(self, model):
        """For the duration, every attention module also returns its probabilities ``(B, heads, T, T)``.

        transformers' fused kernels (SDPA, flash) return no probabilities, so the
        model runs its eager attention meanwhile (``config._attn_implementation``,
        read by every attention forward); its own implementation is back
        afterwards, also on error. Used by methods that score heads by their
        attention maps (GOA's Jensen–Shannon grouping).
        """
        config = model.config
        previous = config._attn_implementation
        config._attn_implementation = "eager"
        try:
            yield
        finally:
            config._attn_implementation = previous
