"""Llama family (``LlamaForCausalLM``, ``LlamaModel``; Mistral and Qwen2 share the names).

Pre-LN decoder blocks: ``h += o_proj(attn(input_layernorm(h)))``,
``h += down_proj(silu(gate_proj(x)) * up_proj(x))`` with ``x = post_attention_layernorm(h)``.

- MLP neurons are rows of ``gate_proj`` and ``up_proj`` and columns of
  ``down_proj``; ``Z`` is the input of ``down_proj`` (DESIGN §1.2).
- Attention units are KV groups (DESIGN §1.3): a group is one K/V head and the
  ``num_heads / num_kv_heads`` query heads that read it, which are consecutive
  in ``q_proj`` (``repeat_kv`` repeats KV head ``g`` for query heads
  ``g·r … g·r + r - 1``). Keeping whole groups keeps the query-per-KV ratio of
  every layer, so ``num_key_value_groups`` stays valid; for MHA a group is a
  head. The attention forward infers the head counts from the projections'
  shapes, so nothing else changes; RoPE, norms and the (tied) embeddings are
  untouched, and the pruned model still runs ``generate()``.
- With ``attention_units="heads"`` a unit is one query head (rows of ``q_proj``,
  columns of ``o_proj``; ``Block.groups`` KV groups). A layer keeps the same
  number ``m`` of query heads in every group, laid out group by group, and the
  key and value maps whole; its ``num_key_value_groups`` becomes ``m``
  (:meth:`LlamaAdapter.set_units`), the one head count the attention forward
  reads from the module rather than the shapes (``repeat_kv`` and SDPA's GQA).
  Every layer reads its own ratio from ``q_proj`` and ``k_proj``.
"""

from __future__ import annotations

import torch

from ..surgery import keep_rows
from .base import Adapter, Block, ZeroAttention, check_attention_units


def _decoder_prefix(model):
    return "model" if hasattr(model, "model") and hasattr(model.model, "layers") else ""


class LlamaAdapter(Adapter):
    model_types = ("llama", "mistral", "qwen2")
    norm_position = "pre"
    gated = True
    causal_lm = True

    def blocks(self, model, attention_units="groups"):
        heads_view = check_attention_units(attention_units) == "heads"
        c = model.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        blocks = []
        for i, layer in enumerate(model.get_submodule(self.layers_path(model))):
            p = f"{self.layers_path(model)}.{i}"
            q_heads = layer.self_attn.q_proj.out_features // head_dim
            groups = layer.self_attn.k_proj.out_features // head_dim
            # query heads per group as this layer has them (a removed attention: the configuration's)
            per_group = q_heads // groups if groups else c.num_attention_heads // c.num_key_value_heads
            attn = f"{p}.self_attn"
            if heads_view and groups and per_group > 1:
                attention = dict(attn_in=(f"{attn}.q_proj",), units=q_heads, unit_size=head_dim, heads_per_unit=1,
                                 groups=groups)
            else:
                attention = dict(attn_in=(f"{attn}.q_proj", f"{attn}.k_proj", f"{attn}.v_proj"), units=groups,
                                 unit_size=per_group * head_dim, heads_per_unit=per_group)
            blocks.append(Block(
                index=i, attention=attn, attn_out=f"{attn}.o_proj",
                mlp_in=(f"{p}.mlp.gate_proj", f"{p}.mlp.up_proj"),
                mlp_out=f"{p}.mlp.down_proj", mlp=f"{p}.mlp", head_dim=head_dim,
                mlp_units=layer.mlp.down_proj.in_features,
                attn_bias=layer.self_attn.q_proj.bias is not None, mlp_bias=layer.mlp.gate_proj.bias is not None,
                **attention,
            ))
        return blocks

    def layers_path(self, model):
        prefix = _decoder_prefix(model)
        return f"{prefix}.layers" if prefix else "layers"

    def hidden_size(self, model):
        return model.config.hidden_size

    def set_units(self, model, block, kept):
        """``num_key_value_groups`` from the cut projections: query heads per KV head (changed only by the heads view)."""
        attention = model.get_submodule(block.attention)
        kv_rows = attention.k_proj.out_features
        if kv_rows:
            attention.num_key_value_groups = attention.q_proj.out_features // kv_rows

    def remove_attention(self, model, block):
        # the decoder layer adds o_proj(context) to the residual: a zero-width context leaves its bias (or 0)
        parent_path, name = block.attention.rsplit(".", 1)
        old = model.get_submodule(block.attention)
        names = ("q_proj", "k_proj", "v_proj", "o_proj")
        for n in names[:3]:  # the query-head view cuts only q_proj's rows: the key and value maps go too
            if getattr(old, n).out_features:
                keep_rows(model, f"{block.attention}.{n}", torch.zeros(0, dtype=torch.int64))
        setattr(model.get_submodule(parent_path), name, ZeroAttention({n: getattr(old, n) for n in names}, out="o_proj"))
