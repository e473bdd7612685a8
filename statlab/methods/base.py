"""The ``PruningMethod`` protocol: what differs between STAT and its peers (DESIGN §1.5).

The driver owns everything the methods share — capture, the budget's cost
model, propagation through pruned layers, surgery and plans. A method only

1. says what its selections read (``needs``), whether its sizes read the
   dense pass (``sizes_read_data``) and whether its pruning pass wants
   activations propagated through the pruned layers below (``propagates``);
2. turns the dense pass into per-module sizes that meet the budget (``sizes``),
   a mapping keyed by :class:`~statlab.records.ModuleKey`;
3. for one module and its size, returns a :class:`Selection`: the kept units,
   the new output map and, optionally, a new output bias and new input rows
   (``select``); the driver applies all of it and the plan stores it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from statlab.backends import Backend, get_backend
from statlab.fast.id import interpolation_coefficients, solve_psd
from statlab.inputs import check_int, check_ridge
from statlab.records import KINDS, ModuleKey
from statlab.reference import budget as budget_lib

NEEDS = frozenset({"activations", "inputs", "dense_outputs"})
"""What a method's selections may read: ``activations`` (the output map's
input: ``ModuleStats.stats``, ``mean``, ``rows``), ``inputs`` (the module's
input ``x``: ``ModuleStats.inputs``, ``inputs_mean``) and ``dense_outputs``
(with propagation, the same activations in the dense model beside the
pruned one's: ``ModuleStats.output_error``, ``inputs_error``, from the
driver's :class:`~statlab.capture.DenseStream`)."""

SIZES_NEEDS = frozenset({"layer_similarity", "attention_probs"})
"""What a method's sizes may read of the dense pass besides the statistics
of :data:`NEEDS`: ``layer_similarity`` (the mean cosine, over the calibration
tokens, between each block's input and output hidden states:
``ModuleStats.layer_similarity``) and ``attention_probs`` (each attention
module's probabilities, reduced per batch by the method's
:meth:`PruningMethod.summarise_attention`: ``ModuleStats.attention``)."""


@dataclass
class ModuleStats:
    """One prunable module as a method sees it.

    Attributes
    ----------
    kind : {"attention", "mlp"}
    layer : int
    units : int
        Heads / KV groups, or neurons.
    unit_size : int
        Input columns of ``W_out`` per unit (``heads_per_unit · head_dim``; 1 for neurons).
    W_out : Tensor, shape (out, units · unit_size)
        The output map (``W_O`` or ``W2`` / ``down_proj``), current weights.
    b_out : Tensor, shape (out,), optional
        The output map's current bias (None: it has none).
    W_in : tuple of Tensor
        The maps whose output rows belong to units (``W_Q, W_K, W_V`` or
        ``W1`` / ``gate, up``), each of shape (units · rows_per_unit, d).
    stats : Tensor (n, n) or ndarray (N, n)
        Gram ``Z^T Z`` of ``W_out``'s input (fast backend) or the activations
        ``Z`` themselves (reference backend); padding excluded. Read it only
        through ``backend``'s operations.
    backend : statlab.backends.Backend
        What holds ``stats`` and computes with them (``backend.prune_mlp``,
        ``backend.gram``, ...); a name (``"fast"``, ``"reference"``) is
        turned into its backend on construction.
    rows : int
        Tokens behind ``stats``.
    mean : Tensor or ndarray, shape (n,), optional
        Mean of ``W_out``'s input over those tokens.
    inputs : Tensor (d, d) or ndarray (N, d), optional
        Gram (or matrix) of the module's input ``x`` (input of ``W_in``), when
        the method's ``needs`` holds ``"inputs"``.
    inputs_mean : shape (d,), optional
    heads_per_unit, head_dim : int
        Attention only (1 and 0 for MLPs).
    groups : int
        Attention in the query-head view of a GQA layer (``Block.groups``): the
        KV groups its ``units`` query heads fall in, ``units / groups``
        consecutive heads each; a selection keeps the same number in every
        group. 0 otherwise.
    ridge : float
        Relative ridge of least-squares corrections.
    propagated : bool
        The statistics were computed through the pruned layers below (False:
        the dense model's, or none).
    layer_similarity : float, optional
        Mean cosine between the block's input and output hidden states on the
        dense model, padding excluded (the same for a layer's two modules),
        when the method's ``sizes_needs`` holds ``"layer_similarity"``.
    b_in : tuple of (Tensor (rows,) or None)
        The input maps' current biases, in the order of ``W_in`` (None: no bias).
    output_error : Tensor (n, n), optional
        ``Z'ᵀ(Z − Z')`` of the output map's input in the pruned model (``Z'``,
        the one ``stats`` holds) and in the dense model (``Z``) on the same
        tokens, padding excluded, fp64 on the capture device under either
        backend; when ``needs`` holds ``"dense_outputs"`` and the statistics
        are propagated (None otherwise: on the dense model ``Z' = Z``).
    inputs_error : Tensor (d, d), optional
        The same for the module's input, ``x'ᵀ(x − x')``, when ``needs`` also holds ``"inputs"``.
    attention : Tensor, optional
        The attention module's :meth:`PruningMethod.summarise_attention`
        averaged over the real query positions of the dense pass, when
        ``sizes_needs`` holds ``"attention_probs"`` (None for MLPs, or where
        the model returned no probabilities).
    remeasure : callable, optional
        ``remeasure(w_in) -> ModuleStats``: the propagated statistics again
        with the input maps' weights replaced by ``w_in`` (shapes of
        ``W_in``) for that pass only; the driver supplies it to propagated
        modules (a method re-fitting the input maps measures what they give).
    cache : dict
        The method's own per-module results, kept while this object lives: the
        driver hands the same object to ``sizes`` and ``select`` when their
        statistics are the same (no propagation), so a factorisation made for
        the sizes can be reused by the selection.
    """

    kind: str
    layer: int
    units: int
    unit_size: int
    W_out: torch.Tensor
    W_in: tuple
    stats: object
    backend: Backend
    rows: int
    mean: object = None
    inputs: object = None
    inputs_mean: object = None
    heads_per_unit: int = 1
    head_dim: int = 0
    ridge: float = 0.0
    b_out: torch.Tensor | None = None
    propagated: bool = False
    layer_similarity: float | None = None
    b_in: tuple = ()
    output_error: torch.Tensor | None = None
    inputs_error: torch.Tensor | None = None
    attention: torch.Tensor | None = None
    remeasure: object = field(default=None, repr=False)
    cache: dict = field(default_factory=dict, repr=False)
    groups: int = 0

    def __post_init__(self):
        self.backend = get_backend(self.backend)

    @property
    def key(self) -> ModuleKey:
        return ModuleKey(self.layer, self.kind)

    def gram(self) -> torch.Tensor:
        """``Z^T Z`` in fp64 as a tensor, whichever the backend (on the CPU for the reference)."""
        return self.backend.gram(self.stats)


@dataclass(frozen=True)
class Selection:
    """What a method keeps of one module, and the weights that replace it (DESIGN §2).

    Attributes
    ----------
    units : list of int, shape (k,)
        Kept units (heads / KV groups, or neurons), in importance order.
    w_out : Tensor, shape (out, k · unit_size)
        The new output map (``W_O`` / ``W2`` / ``down_proj``) on the kept units' columns.
    b_out : Tensor, shape (out,), optional
        The new bias of the output map. None keeps the bias as it is (an absent
        bias stays absent); a tensor on a map without bias gives it one.
    w_in_rows : tuple of Tensor, optional
        New rows of the input maps, in the order of ``ModuleStats.W_in``
        (``W_Q, W_K, W_V`` / ``W1`` or ``gate, up``), each of shape
        (k · rows_per_unit, d): the rows of the kept units, in the order of
        ``units``. None keeps those rows as they are. Their biases are kept.
    """

    units: list
    w_out: torch.Tensor
    b_out: torch.Tensor | None = None
    w_in_rows: tuple | None = None


@dataclass
class SizeChoice:
    """Per-module sizes and what set them.

    Attributes
    ----------
    sizes : dict[ModuleKey, int]
        Kept units of every module. A sequence in the order of the ``costs``
        handed to :meth:`PruningMethod.sizes` is accepted (:meth:`keyed`).
    curves : dict[ModuleKey, ndarray (units + 1,)], optional
        The residual curves the sizes came from (same forms as ``sizes``).
    info : dict
        What else the plan should record (thresholds, shares, ...).
    """

    sizes: Mapping
    curves: Mapping | None = None
    info: dict = field(default_factory=dict)

    def keyed(self, keys) -> "SizeChoice":
        """This choice with ``sizes`` and ``curves`` as mappings over exactly ``keys``, or a ValueError."""
        keys = list(keys)

        def by_key(values, what):
            if values is None:
                return None
            if not isinstance(values, Mapping):
                values = list(values)
                if len(values) != len(keys):
                    raise ValueError(f"{len(values)} {what} for {len(keys)} modules")
                values = dict(zip(keys, values))
            if set(values) != set(keys):
                raise ValueError(f"{what} must name every module once: missing "
                                 f"{[str(k) for k in keys if k not in values][:4]}")
            return {k: values[k] for k in keys}

        sizes = {k: int(v) for k, v in by_key(self.sizes, "sizes").items()}
        return SizeChoice(sizes, by_key(self.curves, "curves"), dict(self.info))


class PruningMethod:
    """Base class: uniform sizes, and the hooks a method overrides.

    Attributes
    ----------
    name : str
    needs : frozenset of str
        What :meth:`select` reads of each module, a subset of :data:`NEEDS`
        (empty: weights only). The driver captures it — on the dense model, or
        through the pruned layers below when the method propagates.
    sizes_read_data : bool
        :meth:`sizes` reads the dense pass's statistics (False: the driver runs
        no dense pass when the selections get propagated ones, and ``modules``
        holds None).
    sizes_needs : frozenset of str
        What else :meth:`sizes` reads of the dense model, a subset of
        :data:`SIZES_NEEDS`; the driver's dense pass supplies it (run for it
        alone if need be), so a method needs no forward pass of its own.
    propagates : bool
        With ``propagate=True``, the pruning pass recomputes each module's
        statistics through the already pruned layers below.
    attention_units : {"groups", "heads"}
        What the method's attention units are on a GQA model
        (:data:`statlab.models.ATTENTION_UNITS`): whole KV groups (default), or
        query heads within their groups (``ModuleStats.groups``; the sizes must
        then be multiples of the groups and each group keeps as many heads).
    phases : tuple of tuple of str
        The order the families are pruned in (each of ``"attention"``, ``"mlp"``
        in exactly one phase). One phase (default): every module's size from one
        :meth:`sizes` on the dense pass, then one bottom-up pass. Several: the
        first phase's sizes come from :meth:`sizes` over every module, but only
        its families are pruned; each later phase measures its own modules again
        on the model the earlier phases left (a new dense pass), and sizes them
        with what those left of the budget.
    """

    name = ""
    attention_units = "groups"
    phases = (KINDS,)
    needs = frozenset({"activations"})
    sizes_read_data = False
    sizes_needs = frozenset()
    propagates = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for attribute, known in (("needs", NEEDS), ("sizes_needs", SIZES_NEEDS)):
            unknown = set(getattr(cls, attribute)) - known
            if unknown:
                raise TypeError(f"{cls.__name__}.{attribute}: unknown {sorted(unknown)}; the driver supplies "
                                f"{sorted(known)}")
            setattr(cls, attribute, frozenset(getattr(cls, attribute)))

    @property
    def captures(self) -> bool:
        """Whether the method reads calibration statistics at all."""
        return bool(self.needs) or self.sizes_read_data or bool(self.sizes_needs)

    def __init__(self, *, seed: int = 0, ridge: float = 0.0):
        self.seed = check_int("seed", seed, minimum=0)
        self.ridge = check_ridge(ridge)
        self.label = self.name  # what plans and progress bars call this configuration

    def prepare(self, model, adapter, blocks, calibration) -> None:
        """Per-run state computed from the dense model before anything is pruned (default: none)."""

    def sizes(self, modules: dict, costs: dict, fraction: float, adapter) -> SizeChoice:
        """Sizes meeting ``fraction`` of the cost; default the same fraction everywhere.

        ``modules`` maps every :class:`~statlab.records.ModuleKey` (bottom-up,
        attention before MLP) to the dense pass's :class:`ModuleStats` (None
        when ``sizes_read_data`` is False); ``costs`` maps the same keys to
        their :class:`~statlab.reference.budget.ModuleCost`.
        """
        return SizeChoice(dict(zip(costs, budget_lib.uniform_sizes(list(costs.values()), fraction))))

    def select(self, module: ModuleStats, k: int) -> Selection:
        """Keep ``k`` units: a :class:`Selection` (kept units, new ``W_out (out, k · unit_size)`` in fp64, ...)."""
        raise NotImplementedError

    def summarise_attention(self, probs: torch.Tensor, rows) -> torch.Tensor:
        """One batch's attention probabilities reduced to what the method keeps (``attention_probs`` in ``sizes_needs``).

        ``probs`` (batch, heads, q, k); ``rows`` the bool mask of real query
        positions (batch, q), or None. Return a sum over the real query
        positions (any shape): the driver adds the batches and divides by the
        number of real query positions (``ModuleStats.attention``).
        """
        raise NotImplementedError(f"{type(self).__name__} lists attention_probs in sizes_needs: "
                                  "it must define summarise_attention")


def unit_columns(units, unit_size: int) -> torch.Tensor:
    """Input columns of ``W_out`` owned by ``units``: (len(units) · unit_size,)."""
    units = torch.as_tensor(units, dtype=torch.int64)
    return (units[:, None] * unit_size + torch.arange(unit_size)).reshape(-1)


def keep_top(module: ModuleStats, scores, k: int) -> Selection:
    """The ``k`` units of largest score, ``W_out`` restricted to them (no correction)."""
    scores = torch.as_tensor(np.asarray(scores, dtype=np.float64))
    order = torch.argsort(scores, descending=True, stable=True)[:k]
    return Selection(order.tolist(), restricted_w_out(module, order))


def restricted_w_out(module: ModuleStats, units) -> torch.Tensor:
    """``W_out``'s columns of ``units`` in fp64 on the CPU, uncorrected: (out, len(units) · unit_size)."""
    return module.W_out.detach().cpu().double()[:, unit_columns(units, module.unit_size)]


def refit_output_map(W: torch.Tensor, G: torch.Tensor, cols: torch.Tensor, error=None, *, ridge=0.0) -> torch.Tensor:
    """Least-squares output map on the columns ``cols`` (GOA's level-2 re-fit, seed 003 Alg. 2; STAT's ``dense_target``).

    Minimises ``‖Z'_K W'ᵀ − Z Wᵀ‖_F`` with ``G = Z'ᵀZ'`` and ``error = Z'ᵀ(Z − Z')``
    (None: ``Z = Z'``): ``W' = W Tᵀ + ((G_KK + λ)⁻¹ E_K Wᵀ)ᵀ``, ``T`` from
    :func:`~statlab.fast.id.interpolation_coefficients` (same ridge ``λ``).
    Returns (out, len(cols)) in fp64.
    """
    G = G.to(torch.float64)
    W = W.to(device=G.device, dtype=torch.float64)
    cols = cols.to(G.device)
    k = cols.numel()
    if k == 0:
        return W[:, cols]
    out = W @ interpolation_coefficients(G, cols, ridge=ridge).T
    if error is not None:
        G_KK = G[cols][:, cols]
        scale = G_KK.diagonal().sum() / k
        if scale > 0:
            lam = (ridge + 10 * torch.finfo(torch.float64).eps) * scale
            rhs = error.to(G)[cols] @ W.T  # (k, out)
            out = out + solve_psd(G_KK + lam * torch.eye(k, dtype=G.dtype, device=G.device), rhs).T
    return out


def unit_energies(module: ModuleStats) -> np.ndarray:
    """Output energy of every unit alone, ``||Z_u W_u^T||_F²``: shape (units,).

    ``Σ_{a, b ∈ u} (W_u^T W_u)_ab G_ab`` from each unit's diagonal block of
    the Gram (:meth:`statlab.backends.Backend.unit_blocks`).
    """
    u, units = module.unit_size, module.units
    blocks = module.backend.unit_blocks(module.stats, units, u)  # (u, u, units)
    W = module.W_out.detach().to(device=blocks.device, dtype=torch.float64)
    Wb = W.reshape(W.shape[0], units, u)
    return (torch.einsum("oia,oib->abi", Wb, Wb) * blocks).sum(dim=(0, 1)).cpu().numpy()
