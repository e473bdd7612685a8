"""BERT (``BertModel`` and task heads on it): post-LN, MHA, GELU MLP."""

from __future__ import annotations

from .base import Adapter, Block, ZeroAttention, check_attention_units


def _encoder_prefix(model):
    return "bert.encoder" if hasattr(model, "bert") else "encoder"


class BertAdapter(Adapter):
    model_types = ("bert",)

    def blocks(self, model, attention_units="groups"):
        check_attention_units(attention_units)  # MHA: a head is its own group, one view
        c = model.config
        head_dim = c.hidden_size // c.num_attention_heads
        prefix = _encoder_prefix(model)
        blocks = []
        for i, layer in enumerate(model.get_submodule(prefix).layer):
            p = f"{prefix}.layer.{i}"
            query, w1 = layer.attention.self.query, layer.intermediate.dense
            blocks.append(Block(
                index=i,
                attention=f"{p}.attention.self",
                attn_in=(f"{p}.attention.self.query", f"{p}.attention.self.key", f"{p}.attention.self.value"),
                attn_out=f"{p}.attention.output.dense",
                mlp_in=(f"{p}.intermediate.dense",),
                mlp_out=f"{p}.output.dense", mlp=f"{p}.intermediate",
                units=query.out_features // head_dim, unit_size=head_dim, head_dim=head_dim,
                mlp_units=layer.output.dense.in_features,
                attn_bias=query.bias is not None, mlp_bias=w1.bias is not None,
            ))
        return blocks

    def layers_path(self, model):
        return f"{_encoder_prefix(model)}.layer"

    def hidden_size(self, model):
        return model.config.hidden_size

    def set_units(self, model, block, kept):
        attn = model.get_submodule(block.attention)
        attn.num_attention_heads = kept
        attn.all_head_size = kept * block.head_dim

    def remove_attention(self, model, block):
        # BertAttention: output = LayerNorm(dense(self(x)) + x); a zero-width context makes dense(.) = b_O
        parent = model.get_submodule(block.attention.rsplit(".", 1)[0])
        parent.self = ZeroAttention({n: getattr(parent.self, n) for n in ("query", "key", "value")})
