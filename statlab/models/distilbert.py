"""DistilBERT (``DistilBertModel``): post-LN, MHA, GELU MLP, output map inside the attention."""

from __future__ import annotations

from .base import Adapter, Block, ZeroAttention, check_attention_units


class DistilBertAdapter(Adapter):
    model_types = ("distilbert",)

    def blocks(self, model, attention_units="groups"):
        check_attention_units(attention_units)  # MHA: a head is its own group, one view
        c = model.config
        head_dim = c.dim // c.n_heads
        prefix = self.layers_path(model).rsplit(".", 1)[0]
        blocks = []
        for i, layer in enumerate(model.get_submodule(prefix).layer):
            p = f"{prefix}.layer.{i}"
            blocks.append(Block(
                index=i,
                attention=f"{p}.attention",
                attn_in=(f"{p}.attention.q_lin", f"{p}.attention.k_lin", f"{p}.attention.v_lin"),
                attn_out=f"{p}.attention.out_lin",
                mlp_in=(f"{p}.ffn.lin1",),
                mlp_out=f"{p}.ffn.lin2", mlp=f"{p}.ffn",
                units=layer.attention.q_lin.out_features // head_dim, unit_size=head_dim, head_dim=head_dim,
                mlp_units=layer.ffn.lin2.in_features,
                attn_bias=layer.attention.q_lin.bias is not None, mlp_bias=layer.ffn.lin1.bias is not None,
            ))
        return blocks

    def layers_path(self, model):
        return "distilbert.transformer.layer" if hasattr(model, "distilbert") else "transformer.layer"

    def hidden_size(self, model):
        return model.config.dim

    def set_units(self, model, block, kept):
        model.get_submodule(block.attention).n_heads = kept

    def remove_attention(self, model, block):
        parent_path, name = block.attention.rsplit(".", 1)
        old = model.get_submodule(block.attention)
        names = ("q_lin", "k_lin", "v_lin", "out_lin")
        setattr(model.get_submodule(parent_path), name, ZeroAttention({n: getattr(old, n) for n in names}, out="out_lin"))
