"""Model adapters, one per family, chosen by ``config.model_type``."""

from __future__ import annotations

from .base import ATTENTION_UNITS, Adapter, Block, check_attention_units
from .bert import BertAdapter
from .distilbert import DistilBertAdapter
from .llama import LlamaAdapter

ADAPTERS: dict[str, type[Adapter]] = {}
for _cls in (BertAdapter, DistilBertAdapter, LlamaAdapter):
    for _t in _cls.model_types:
        ADAPTERS[_t] = _cls

DECODER_TYPES = tuple(t for t, cls in ADAPTERS.items() if cls.causal_lm)  # loaded with AutoModelForCausalLM


class UnsupportedModelError(ValueError):
    """The model's family has no adapter."""


def get_adapter(model) -> Adapter:
    """The adapter for ``model.config.model_type``; a clear error listing the supported ones otherwise."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ADAPTERS:
        raise UnsupportedModelError(
            f"unsupported architecture {model_type!r}: statlab supports {', '.join(sorted(ADAPTERS))}"
        )
    return ADAPTERS[model_type]()


__all__ = ["Adapter", "Block", "ATTENTION_UNITS", "check_attention_units", "get_adapter", "UnsupportedModelError", "ADAPTERS", "DECODER_TYPES"]
