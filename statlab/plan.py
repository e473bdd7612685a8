"""PruningPlan: what was kept and the corrected weights, as JSON + safetensors.

A plan is data, not a pickle: ``plan.json`` (kept units per layer, budget,
method, hashes, versions) and ``weights.safetensors`` (the corrected output
maps, in the model's dtype). Applying it to the base model it was made from
reproduces the pruned model bit for bit; applying it to another model is
refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .models import get_adapter
from .surgery import keep_rows, set_input_weight, unit_rows

FORMAT_VERSION = 1
_VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures")


class PlanMismatchError(ValueError):
    """A plan applied to a model it was not made from."""


def config_hash(model) -> str:
    """SHA-256 of the model's configuration, volatile keys removed."""
    config = model.config.to_dict()
    for key in _VOLATILE_CONFIG_KEYS:
        config.pop(key, None)
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def weights_fingerprint(model, blocks) -> str:
    """SHA-256 of the first layer's dense output maps: tells two checkpoints of one architecture apart."""
    digest = hashlib.sha256()
    for path in (blocks[0].attn_out, blocks[0].mlp_out):
        w = model.get_submodule(path).weight.detach().to("cpu", torch.float32).contiguous()
        digest.update(w.numpy().tobytes())
    return digest.hexdigest()


@dataclass
class PruningPlan:
    """The outcome of :func:`statlab.prune`.

    Attributes
    ----------
    meta : dict
        ``base`` (name or path to reload), ``model_type``, ``config_hash``,
        ``fingerprint``, ``budget``, ``method``, ``backend``, ``calibration``
        (hash, examples, tokens), ``seed``, ``propagate``, ``ridge``,
        ``versions``, and summary figures (``macs``, ``dense_macs``, ...).
    layers : list of dict
        Per layer: ``attn_units``, ``attn_kept`` (units in importance order),
        ``mlp_units``, ``mlp_kept``, and the residual curves used for the sizes.
    tensors : dict of str to Tensor
        ``layer.{i}.attn_out.weight (out, k_a · u)`` and ``layer.{i}.mlp_out.weight (out, k_m)``.
    """

    meta: dict
    layers: list = field(default_factory=list)
    tensors: dict = field(default_factory=dict)

    def kept_fraction(self) -> dict:
        heads = sum(len(l["attn_kept"]) for l in self.layers) / sum(l["attn_units"] for l in self.layers)
        neurons = sum(len(l["mlp_kept"]) for l in self.layers) / sum(l["mlp_units"] for l in self.layers)
        return {"heads": heads, "neurons": neurons}

    def save(self, directory) -> Path:
        """Write ``plan.json`` and ``weights.safetensors`` atomically (a temp dir renamed into place)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            tensors = {k: v.detach().cpu().contiguous() for k, v in self.tensors.items()}
            save_file(tensors, tmp / "weights.safetensors")
            document = {"format": FORMAT_VERSION, "meta": self.meta, "layers": self.layers}
            (tmp / "plan.json").write_text(json.dumps(document, indent=1))
            if directory.exists():
                old = directory.with_name(f".{directory.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(directory, old)
                os.replace(tmp, directory)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return directory

    @classmethod
    def load(cls, directory) -> "PruningPlan":
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / "plan.json").is_file():
            raise FileNotFoundError(f"{directory} holds no plan.json: not a saved statlab plan")
        document = json.loads((directory / "plan.json").read_text())
        if document.get("format") != FORMAT_VERSION:
            raise ValueError(f"plan format {document.get('format')} is not {FORMAT_VERSION}")
        return cls(document["meta"], document["layers"], load_file(directory / "weights.safetensors"))

    def check_model(self, model, blocks) -> None:
        """Refuse a model the plan was not made from (architecture, config or weights differ)."""
        model_type = getattr(model.config, "model_type", None)
        if model_type != self.meta["model_type"]:
            raise PlanMismatchError(f"plan is for a {self.meta['model_type']} model, got {model_type}")
        if config_hash(model) != self.meta["config_hash"]:
            raise PlanMismatchError("the model's configuration differs from the one the plan was made for")
        if weights_fingerprint(model, blocks) != self.meta["fingerprint"]:
            raise PlanMismatchError(
                f"the model's weights differ from those of {self.meta['base']!r}, the plan's base model"
            )

    def apply(self, model):
        """Prune ``model`` (a dense copy of the base model) in place; returns it."""
        adapter = get_adapter(model)
        blocks = adapter.blocks(model)
        self.check_model(model, blocks)
        for block, layer in zip(blocks, self.layers):
            apply_attention(model, adapter, block, layer["attn_kept"], self.tensors[f"layer.{block.index}.attn_out.weight"])
            apply_mlp(model, block, layer["mlp_kept"], self.tensors[f"layer.{block.index}.mlp_out.weight"])
        return model


def apply_attention(model, adapter, block, kept, weight) -> None:
    """Keep attention units ``kept`` of ``block``; ``weight (out, k·u)`` becomes ``W_O``."""
    units = torch.as_tensor(kept, dtype=torch.int64)
    for path in block.attn_in:
        rows_per_unit = model.get_submodule(path).out_features // block.units
        keep_rows(model, path, unit_rows(units, rows_per_unit))
    set_input_weight(model, block.attn_out, weight)
    if len(kept) == 0:
        adapter.remove_attention(model, block)
    else:
        adapter.set_units(model, block, len(kept))


def apply_mlp(model, block, kept, weight) -> None:
    """Keep neurons ``kept`` of ``block``; ``weight (out, k)`` becomes ``W2``."""
    rows = torch.as_tensor(kept, dtype=torch.int64)
    for path in block.mlp_in:
        keep_rows(model, path, rows)
    set_input_weight(model, block.mlp_out, weight)


def load_pruned(directory, *, dtype=None):
    """Load the base model named in a saved plan and apply the plan: ``(model, tokenizer, plan)``."""
    from .models.loading import load_model

    plan = PruningPlan.load(directory)
    model, tokenizer = load_model(plan.meta["base"], dtype=dtype or getattr(torch, plan.meta["dtype"]))
    return plan.apply(model), tokenizer, plan
