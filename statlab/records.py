"""The small frozen values a prune is made of: what was asked, which module, what each layer kept.

- :class:`ModuleKey` names one prunable module, ``(layer, kind)``; sizes,
  costs and curves are mappings keyed by it (never a flat list indexed
  ``2 * layer + j``).
- :class:`PruneConfig` is everything the caller chose; the plan records it
  verbatim (``PruningPlan.meta``'s keys of the same names).
- :class:`LayerRecord` is what one block kept; a plan's ``layers`` are these
  records in their JSON form (:meth:`LayerRecord.as_json`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

KINDS = ("attention", "mlp")


class ModuleKey(NamedTuple):
    """One prunable module: ``layer`` (block index from 0) and ``kind`` (``"attention"`` or ``"mlp"``)."""

    layer: int
    kind: str

    def __str__(self) -> str:
        return f"layer {self.layer} {self.kind}"


def module_keys(blocks) -> list:
    """Every module of ``blocks``, bottom-up, attention before MLP in each block: list of :class:`ModuleKey`."""
    return [ModuleKey(b.index, kind) for b in blocks for kind in KINDS]


@dataclass(frozen=True)
class PruneConfig:
    """The choices of one :func:`statlab.prune` call, as checked; recorded verbatim in the plan.

    Attributes
    ----------
    budget : dict
        ``{"mac_fraction": μ}`` or ``{"sparsity": s}``.
    method : str
        The method's label (its name plus any non-default configuration).
    backend : {"fast", "reference"}
    seed : int
    propagate : bool
        Whether the selections were fitted on propagated activations (False
        also for methods that never propagate).
    ridge : float
    seq_len : int
        Reference length of the MAC model.
    precision : {"fp64", "fp32", "tf32"}
    """

    budget: dict
    method: str
    backend: str
    seed: int
    propagate: bool
    ridge: float
    seq_len: int
    precision: str

    @property
    def fraction(self) -> float:
        """The kept fraction of the cost: μ, or ``1 - s``."""
        return self.budget["mac_fraction"] if "mac_fraction" in self.budget else 1.0 - self.budget["sparsity"]

    @property
    def cost_kind(self) -> str:
        """``"macs"`` or ``"params"``: what the budget counts."""
        return "macs" if "mac_fraction" in self.budget else "params"

    def record(self) -> dict:
        """The plan's copy: ``{field: value}``, JSON-ready."""
        return asdict(self)


@dataclass(frozen=True)
class LayerRecord:
    """What one block kept, and the residual curves its sizes came from.

    Attributes
    ----------
    index : int
    attn_units, mlp_units : int
        Dense attention units (heads or KV groups) and neurons.
    attn_kept, mlp_kept : tuple of int
        Kept units, in the method's importance order.
    attn_residuals, mlp_residuals : tuple of float, optional
        Relative output error ``r(k)``, ``k = 0..units``, where the method drew one.
    """

    index: int
    attn_units: int
    attn_kept: tuple
    mlp_units: int
    mlp_kept: tuple
    attn_residuals: tuple | None = None
    mlp_residuals: tuple | None = None

    def as_json(self) -> dict:
        """The plan's form of the record (lists; the keys of format 1 and 2)."""
        def listed(x):
            return None if x is None else list(x)

        return {"index": self.index, "attn_units": self.attn_units, "attn_kept": list(self.attn_kept),
                "mlp_units": self.mlp_units, "mlp_kept": list(self.mlp_kept),
                "attn_residuals": listed(self.attn_residuals), "mlp_residuals": listed(self.mlp_residuals)}

    @classmethod
    def from_json(cls, layer: dict) -> "LayerRecord":
        def tupled(x, kind):
            return None if x is None else tuple(kind(v) for v in x)

        return cls(int(layer["index"]), int(layer["attn_units"]), tupled(layer["attn_kept"], int),
                   int(layer["mlp_units"]), tupled(layer["mlp_kept"], int),
                   tupled(layer.get("attn_residuals"), float), tupled(layer.get("mlp_residuals"), float))
