"""The pruning driver: ``prune(model, calibration, ...) -> PruningPlan`` (DESIGN §1.4, §2.1).

1. One pass over the dense model captures every block's context and MLP
   activations; each module's residual curve follows from its ID.
2. One threshold on the layer-weighted curves sets every module's size to meet
   the budget (MACs at a reference length, or parameters).
3. Bottom-up, each block is pruned at its size from activations recomputed
   through the already pruned blocks below (``propagate=True``), so each
   selection and correction is fitted on the inputs the pruned model will
   feed the module (it reproduces the unpruned module on those inputs; it
   does not aim at the dense model's output).

A method that prunes the families in turn (:attr:`~statlab.methods.PruningMethod.phases`,
e.g. ``Stat(order="neurons first")``) runs 1–3 once per phase: the first
phase's sizes come from every module's curves but only its families are
pruned; a later phase measures its modules again on the model as the earlier
phases left it, with what they left of the budget.
"""

from __future__ import annotations

import contextlib
import hashlib
import platform
import time

import numpy as np
import torch
from tqdm import tqdm

from statlab.reference import budget as budget_lib

from .backends import get_backend
from .capture import BACKENDS, DenseStream, LayerReplay, cache_bytes, cache_fits, capture
from .costs import module_costs
from .fast.gram import accumulation_dtype
from .inputs import (CalibrationError, NonFiniteWeightError, check_calibration, check_finite_parameters,
                     check_int, check_real, check_ridge, eval_mode)
from .methods import ModuleStats, PruningMethod, Selection, get_method, unit_columns
from .models import check_attention_units, get_adapter
from .offload import check_placement, execution_device, input_device, is_dispatched, resident, streamed
from .plan import (PruningPlan, apply_selection, config_hash, head_layout_problem, selection_tensors,
                   weights_fingerprint)
from .records import KINDS, LayerRecord, ModuleKey, PruneConfig, module_keys


def _check_budget(mac_fraction, sparsity):
    if (mac_fraction is None) == (sparsity is None):
        raise ValueError("give exactly one budget: mac_fraction=μ (MACs kept) or sparsity=s (parameters removed)")
    mac_fraction = check_real("mac_fraction", mac_fraction, allow_none=True)
    sparsity = check_real("sparsity", sparsity, allow_none=True)
    if mac_fraction is not None:
        if not 0 < mac_fraction <= 1:
            raise ValueError(f"mac_fraction must lie in (0, 1], got {mac_fraction}")
        return {"mac_fraction": float(mac_fraction)}, float(mac_fraction)
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must lie in [0, 1), got {sparsity}")
    return {"sparsity": float(sparsity)}, 1.0 - float(sparsity)


def _check_calibration(calibration, blocks, model):
    check_calibration(calibration, model)
    tokens = sum(int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel()
                 for b in calibration)
    widest = max(b.mlp_units for b in blocks)
    if tokens < widest:
        raise CalibrationError(
            f"{tokens} calibration tokens for modules of up to {widest} units: the activations would be "
            f"rank-deficient; use at least {widest} tokens (STAT uses several hundred examples)"
        )
    seq_len = max(int(b["input_ids"].shape[-1]) for b in calibration)
    digest = hashlib.sha256()
    for b in calibration:
        digest.update(b["input_ids"].cpu().numpy().tobytes())
    return tokens, seq_len, digest.hexdigest()


def prune(model, calibration, *, mac_fraction=None, sparsity=None, backend="fast", method="stat",
          seed=0, propagate=True, ridge=0.0, seq_len=None, base=None, precision="fp64", offload=False,
          device=None) -> PruningPlan:
    """Prune ``model`` in place to a budget and return the plan that reproduces it.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A supported model (see :func:`statlab.models.get_adapter`), dense.
    calibration : list of dict
        Tokenised unlabeled batches: ``input_ids`` int tensors (batch, seq) and,
        where padded, the ``attention_mask`` of the same shape (padding is
        excluded); checked by :func:`statlab.inputs.check_calibration`.
    mac_fraction : float in (0, 1], optional
        μ: MACs of the pruned blocks / dense MACs at ``seq_len`` tokens (STAT's budget).
    sparsity : float in [0, 1), optional
        Fraction of attention + MLP parameters removed.
    backend : {"fast", "reference"}
        Streamed Grams on the model's device, or NumPy matrices through :mod:`statlab.reference`.
    method : str or PruningMethod
        A name in :data:`statlab.methods.METHODS`: ``stat`` (ID + correction,
        sizes from error curves), or a baseline with the same kept fraction in
        every module and no correction — ``activation`` (output energy
        ``||Z_u W_u^T||`` on the calibration data, Wanda-sp / FLAP style),
        ``magnitude`` (weight norms), ``random``; or a configured instance,
        e.g. ``Stat(correction=False)`` (its ``seed`` and ``ridge`` are its own;
        the arguments here are then unused).
    seed : int
        Recorded in the plan; the methods here are deterministic.
    propagate : bool
        Recompute activations through the pruned blocks below (default) or use the
        dense pass for every block (the one-pass variant); only for methods that
        propagate (``stat``). The propagated pass runs each block once: a
        pruned module's output is formed from the input of its output map,
        cached while it was captured (:meth:`statlab.capture.LayerReplay.stand_in`;
        per module ``tokens × width`` in the model's dtype, e.g. 400 MB for
        65,536 tokens × 1,536 fp32 neurons), and re-run where that would not fit
        in a quarter of the device's free memory (``plan.meta["pruned_pass"]``
        counts both).
    ridge : float
        Relative ridge of the least-squares corrections, finite and >= 0.
    seq_len : int, optional
        Reference length of the MAC model; default the calibration's longest batch.
    base : str, optional
        Name or path that reloads the dense model (default ``model.name_or_path``).
    precision : {"fp64", "fp32", "tf32"}
        Accumulation of the Grams the selections and corrections come from.
        fp64 (default) where the hardware runs it at speed (CPU; A100/H100/H200
        tensor cores); fp32, or tf32 on CUDA, as the opt-in elsewhere (see
        :class:`statlab.fast.GramAccumulator` for the accuracy of each). With
        propagation the dense pass, which only sets the sizes, uses fp32 when
        this is fp64. Factorisations always run in fp64.
    offload : bool
        Keep the blocks where they are (normally CPU memory) and compute each
        module on ``device`` only while it runs, through accelerate's
        offloading hooks; the block being pruned and the one below it stay on
        the device while they are worked on (:class:`statlab.offload.OffloadedBlocks`).
        A model larger than the GPU's memory can be pruned; the pruned model
        ends where it started. A model accelerate dispatched (loaded with
        ``device_map=``: blocks on several GPUs, in CPU memory or on disk)
        needs neither this nor ``device``: it is pruned where it lies, each
        block on its own device, and each pruned block written back to its place.
    device : str or torch.device, optional
        The compute device with ``offload=True`` (required there; e.g. ``"cuda"``).

    Returns
    -------
    PruningPlan

    Raises
    ------
    TypeError, ValueError
        An option of the wrong type or outside its range, or calibration that
        is not a list of dicts of tensors; both before any work.
    CalibrationError
        Calibration that is empty, too small, or malformed (the message names the batch).
    NonFiniteWeightError
        NaN/Inf in a parameter (before any work) or in a new output map, bias or
        input rows (the message names the layer and module; the layers below are
        then pruned).
    SelectionError
        A method's :class:`~statlab.methods.Selection` whose shapes do not fit
        the module (the message names the method, layer and module).

    The model runs in eval mode (no dropout) and gets its modes back at the end,
    also on error.
    """
    budget, fraction = _check_budget(mac_fraction, sparsity)
    ridge = check_ridge(ridge)
    seed = check_int("seed", seed, minimum=0)
    seq_len = check_int("seq_len", seq_len, minimum=1, allow_none=True)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    accumulation_dtype(precision)  # a clear error for an unknown precision before any work
    dispatched = is_dispatched(model)
    check_placement(offload=offload, device=device,
                    placed="the model is dispatched by accelerate (loaded with device_map=): its dispatch"
                    if dispatched else None)
    if not offload and not dispatched and device is not None and torch.device(device) != next(model.parameters()).device:
        raise ValueError(f"the model is on {next(model.parameters()).device}, not {device}: move it there "
                         "or pass offload=True to run its blocks on the device one at a time")
    pruner = method if isinstance(method, PruningMethod) else get_method(method, seed=seed, ridge=ridge)
    adapter = get_adapter(model)
    attention_units = check_attention_units(getattr(pruner, "attention_units", "groups"))
    blocks = adapter.blocks(model, attention_units)
    check_finite_parameters(model, blocks, adapter.layers_path(model))
    tokens, calib_len, calib_hash = _check_calibration(calibration, blocks, model)
    config = PruneConfig(budget=budget, method=pruner.label, backend=backend, seed=pruner.seed, propagate=propagate,
                         ridge=pruner.ridge, seq_len=seq_len or calib_len, precision=precision)
    meta = {
        "base": base or getattr(model, "name_or_path", None) or model.config._name_or_path,
        "model_type": model.config.model_type,
        "config_hash": config_hash(model),
        "fingerprint": weights_fingerprint(model),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        **config.record(),
        "calibration": {"hash": calib_hash, "batches": len(calibration), "tokens": tokens},
    }
    if any(b.groups for b in blocks):  # PruningPlan.apply describes the model the same way
        meta["attention_units"] = attention_units
    keys = module_keys(blocks)
    costs = dict(zip(keys, (c for pair in module_costs(model, adapter, blocks, config.cost_kind, config.seq_len)
                            for c in pair)))
    on_demand = streamed(model, device, offload)
    phases = _check_phases(pruner)
    with eval_mode(model), on_demand:
        run = _Run(model, adapter, blocks, calibration, pruner, config, _PhaseClock(model))
        with run.clock("prepare"):
            pruner.prepare(model, adapter, blocks, calibration)
        sizes, curves, kept, tensors, infos = {}, {}, {}, {}, []
        for position, kinds in enumerate(phases):
            # the first phase's sizes are drawn over every module; a later phase re-measures its own modules
            # on the model the earlier phases pruned and gets what they left of the budget
            sizing = keys if position == 0 else [k for k in keys if k.kind in kinds]
            fraction = config.fraction if position == 0 else _remaining_fraction(config.fraction, sizes, costs, sizing)
            modules = run.dense_modules(sizing)
            choice = run.choose_sizes(modules, {k: costs[k] for k in sizing}, fraction)
            phase_keys = [k for k in sizing if k.kind in kinds]
            sizes.update({k: choice.sizes[k] for k in phase_keys})
            curves.update({k: (choice.curves or {}).get(k) for k in phase_keys})
            infos.append({"kinds": list(kinds), "fraction": fraction, **choice.info})
            kept_now, tensors_now = run.prune_blocks(choice.sizes, modules if not run.propagate else None, kinds)
            kept.update(kept_now)
            tensors.update(tensors_now)
        if len(phases) == 1:
            meta.update(choice.info)
        else:
            meta["phases"] = infos
    records = [LayerRecord(b.index, b.units, kept[ModuleKey(b.index, "attention")],
                           costs[ModuleKey(b.index, "mlp")].units, kept[ModuleKey(b.index, "mlp")],
                           _curve(curves.get(ModuleKey(b.index, "attention"))),
                           _curve(curves.get(ModuleKey(b.index, "mlp")))) for b in blocks]
    sizes = [sizes[k] for k in keys]
    cost_list = [costs[k] for k in keys]
    meta.update({
        "kept_cost": budget_lib.total_cost(sizes, cost_list),
        "dense_cost": budget_lib.total_cost([c.units for c in cost_list], cost_list),
        "cost_kind": config.cost_kind,
        "prune_seconds": run.clock.total(), "phase_seconds": run.clock.seconds,
        "versions": _versions(),
    })
    if run.propagate:
        meta["pruned_pass"] = dict(run.pass_cache)
    if offload:
        meta["offload"] = {"device": str(device), "streamed_block_runs": on_demand.streamed}
    if dispatched:
        meta["device_map"] = {k: str(v) for k, v in model.hf_device_map.items()}
    return PruningPlan(meta, [r.as_json() for r in records], tensors)


class _Run:
    """One prune's data flow: dense pass → sizes → per block: statistics, selection, surgery, record.

    The selections are fitted on propagated statistics (:class:`~statlab.capture.LayerReplay`)
    when the method propagates and the caller asked for it; otherwise on the
    dense pass's, and then the very :class:`~statlab.methods.ModuleStats` the
    sizes saw are handed to ``select`` (with their ``cache``).
    """

    def __init__(self, model, adapter, blocks, calibration, pruner, config, clock):
        self.model, self.adapter, self.blocks, self.calibration = model, adapter, blocks, calibration
        self.pruner, self.config, self.clock = pruner, config, clock
        self.propagate = config.propagate and pruner.propagates and bool(pruner.needs)
        self.dtype = next(model.parameters()).dtype
        self.pass_cache = {"cached": 0, "rerun": 0}  # modules whose pruned output came from their cached input

    def dense_modules(self, keys) -> dict:
        """``{key: ModuleStats}`` of the model as it stands (dense, or as the earlier phases left it).

        The statistics only where a step reads them.
        """
        pruner, config = self.pruner, self.config
        needs = set(pruner.needs) if not self.propagate else set()
        if pruner.sizes_read_data:
            needs |= set(pruner.needs) | {"activations"}
        similarity = "layer_similarity" in pruner.sizes_needs
        attention = "attention_probs" in pruner.sizes_needs
        captured = None
        if needs or similarity or attention:
            # the probabilities come from the eager attention only, switched on for this pass by the adapter
            maps = self.adapter.attention_maps(self.model) if attention else contextlib.nullcontext()
            with self.clock("dense pass"), maps:
                # With propagation the dense pass only draws the sizes: fp32 Grams
                # (floor ~3e-4 relative) are ample for that and cost less than fp64.
                precision = "fp32" if self.propagate and config.precision == "fp64" else config.precision
                kinds = {k.kind for k in keys}  # a later phase's pass reads its own family only
                only = next(iter(kinds)) if len(kinds) == 1 else None
                captured = capture(self.model, self.calibration, _targets(self.blocks, needs, only),
                                   backend=config.backend, desc="dense pass", precision=precision,
                                   similarity_of=self.adapter.layers_path(self.model) if similarity else None,
                                   attention_of={str(ModuleKey(b.index, "attention")): b.attention
                                                 for b in self.blocks} if attention else None,
                                   summarise=pruner.summarise_attention if attention else None)
        by_index = {b.index: b for b in self.blocks}
        modules = {}
        for index in dict.fromkeys(k.layer for k in keys):  # each block's modules in one visit
            # offloaded weights are read onto the CPU: a method holds every module's while it sets the sizes
            with resident(self.model, [self.block_path(by_index[index])], device="cpu"):
                for k in keys:
                    if k.layer == index:
                        modules[k] = _module(self.model, by_index[index], k.kind, captured, config.backend,
                                             config.ridge, propagated=False)
        return modules

    def block_path(self, block) -> str:
        return f"{self.adapter.layers_path(self.model)}.{block.index}"

    def choose_sizes(self, modules, costs, fraction):
        """The method's :class:`~statlab.methods.SizeChoice` over exactly the keys of ``costs``, checked."""
        with self.clock("sizes"):
            choice = self.pruner.sizes(modules, costs, fraction, self.adapter)
            try:
                choice = choice.keyed(list(costs))
            except ValueError as e:
                raise SelectionError(f"method {self.config.method!r}: {e}") from None
            _check_group_sizes(choice.sizes, self.blocks, self.config.method)
        return choice

    def prune_blocks(self, sizes, modules, kinds=KINDS):
        """Prune the ``kinds`` of every block bottom-up at ``sizes``: ``({key: kept units}, plan tensors)``.

        ``modules``: the dense pass's, reused for the selections (one-pass), or None (propagated).
        """
        layers_path = self.adapter.layers_path(self.model)
        replay = LayerReplay(self.model, layers_path) if self.propagate else None
        # the dense model's activations beside the propagated ones, for methods fitting to the dense outputs
        self.dense = DenseStream(self.model, layers_path) if self.propagate and "dense_outputs" in self.pruner.needs \
            else None
        kept, tensors = {}, {}
        for position, b in enumerate(tqdm(self.blocks, desc=f"prune ({self.config.method})", leave=False,
                                          disable=None)):
            # offloaded blocks: this one (rewritten) and the one below (whose pruned outputs it replays) stay put
            below = [self.block_path(self.blocks[position - 1])] if position else []
            with resident(self.model, below), resident(self.model, [self.block_path(b)], write=True):
                kept.update(self._prune_block(b, sizes, modules, replay, tensors, kinds))
        return kept, tensors

    def _prune_block(self, b, sizes, modules, replay, tensors, kinds) -> dict:
        """Select and rewrite ``b``'s ``kinds`` (attention before MLP); the plan's tensors go into ``tensors``.

        Returns ``{key: kept units}``.
        """
        kept = {}
        if self.dense is not None:
            self.dense.begin(b.index)  # a dense copy of the block, before its surgery
        kinds = [k for k in KINDS if k in kinds]
        for kind in kinds:
            key = ModuleKey(b.index, kind)
            inputs = None
            with self.clock("capture"):
                if modules is None:
                    targets = _targets([b], self.pruner.needs, kind)
                    keep = [str(key)] if str(key) in targets and self._cacheable(b, kind, targets[str(key)]) else []
                    captured = replay.capture(self.calibration, b, targets, backend=self.config.backend,
                                              precision=self.config.precision, desc=str(key), keep=keep,
                                              dense=self.dense, record_dense=kind == kinds[-1])
                    inputs = captured.pop("kept", {}).get(str(key))
                    module = _module(self.model, b, kind, captured, self.config.backend, self.config.ridge,
                                     propagated=True, remeasure=self._remeasure(b, kind, replay))
                else:
                    module = modules.pop(key)
            with self.clock("selection"):
                selection = _checked_selection(self.pruner.select(module, sizes[key]), module, sizes[key],
                                               self.config.method)
                selection = _finite_output_map(selection, self.dtype, b, kind)
                if kind == "attention" and b.groups:
                    selection = _grouped(selection, b, self.config.method)
            del module
            with self.clock("rewrite"):
                apply_selection(self.model, self.adapter, b, kind, selection)
            if replay is not None:  # the pruned module's output from its cached input where that is still its input
                cached = inputs is not None and _reusable(kind, selection)
                if cached:
                    replay.stand_in(b, kind, inputs, selection.units)
                self.pass_cache["cached" if cached else "rerun"] += 1
            del inputs
            kept[key] = tuple(selection.units)
            tensors.update(selection_tensors(key, selection))
        return kept

    def _remeasure(self, block, kind, replay):
        """``ModuleStats.remeasure``: the module's propagated statistics again, its input maps' weights replaced."""
        def remeasure(w_in) -> ModuleStats:
            paths = block.attn_in if kind == "attention" else block.mlp_in
            if len(w_in) != len(paths):
                raise ValueError(f"remeasure takes {len(paths)} input maps' weights, got {len(w_in)}")
            with _weights_swapped(self.model, dict(zip(paths, w_in))):
                captured = replay.capture(self.calibration, block, _targets([block], self.pruner.needs, kind),
                                          backend=self.config.backend, precision=self.config.precision,
                                          desc=f"{ModuleKey(block.index, kind)} again", dense=self.dense)
                return _module(self.model, block, kind, captured, self.config.backend, self.config.ridge,
                               propagated=True)
        return remeasure

    def _cacheable(self, block, kind, out_path) -> bool:
        """Whether the input of ``block``'s ``kind`` output map over the calibration fits the device's memory."""
        width = block.units * block.unit_size if kind == "attention" else block.mlp_units
        device = execution_device(self.model.get_submodule(out_path))
        return cache_fits(cache_bytes(self.calibration, width, self.dtype), device)


def _reusable(kind, selection) -> bool:
    """Whether the output map's input captured before ``selection`` still is the pruned module's (kept columns).

    Not when the input maps were refitted (a new context / new activations),
    nor for an attention with no head left (the adapter's ZeroAttention is
    cheaper than any cache).
    """
    return selection.w_in_rows is None and (kind == "mlp" or len(selection.units) > 0)


class SelectionError(ValueError):
    """A method's :class:`~statlab.methods.Selection` that does not fit its module (a bug in the method)."""


def _checked_selection(selection, module: ModuleStats, k: int, method: str) -> Selection:
    """``selection`` as a :class:`Selection` whose shapes fit ``module`` at ``k`` units, or :class:`SelectionError`."""
    where = f"method {method!r}, layer {module.layer} {module.kind}"
    if not isinstance(selection, Selection):
        raise SelectionError(f"{where}: select() must return a Selection, got {type(selection).__name__}")
    units = [int(u) for u in selection.units]
    if len(units) != k or len(set(units)) != k or any(not 0 <= u < module.units for u in units):
        raise SelectionError(f"{where}: {len(units)} kept units {units[:8]} for a size of {k} distinct units "
                             f"in 0..{module.units - 1}")
    out = module.W_out.shape[0]

    def check(name, tensor, shape):
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
            got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise SelectionError(f"{where}: {name} has shape {got}, expected {shape}")

    check("w_out", selection.w_out, (out, k * module.unit_size))
    if selection.b_out is not None:
        check("b_out", selection.b_out, (out,))
    rows = selection.w_in_rows
    if rows is not None:
        if not isinstance(rows, (tuple, list)) or len(rows) != len(module.W_in):
            raise SelectionError(f"{where}: w_in_rows must hold {len(module.W_in)} tensors, one per input map")
        for j, (w, W) in enumerate(zip(rows, module.W_in)):
            check(f"w_in_rows[{j}]", w, (k * (W.shape[0] // module.units), W.shape[1]))
        rows = tuple(rows)
    return Selection(units, selection.w_out, selection.b_out, rows)


def _check_phases(pruner) -> tuple:
    """The method's :attr:`~statlab.methods.PruningMethod.phases`, checked: each kind in exactly one phase."""
    phases = tuple(tuple(kinds) for kinds in pruner.phases)
    named = [kind for kinds in phases for kind in kinds]
    if not phases or any(not kinds for kinds in phases) or sorted(named) != sorted(KINDS):
        raise ValueError(f"method {pruner.label!r}: phases must name each of {KINDS} once, got {phases}")
    return phases


def _remaining_fraction(fraction, sizes, costs, keys) -> float:
    """The fraction of ``keys``' dense cost that the budget leaves them once the modules in ``sizes`` are sized.

    ``(μ D − Σ_{i ∈ sizes} cost_i(k_i)) / D_keys``, with ``D`` the dense cost of
    every module in ``costs``; clipped to ``[0, 1]``.
    """
    dense = budget_lib.total_cost([c.units for c in costs.values()], list(costs.values()))
    fixed = budget_lib.total_cost(list(sizes.values()), [costs[k] for k in sizes])
    own = budget_lib.total_cost([costs[k].units for k in keys], [costs[k] for k in keys])
    return float(min(1.0, max(0.0, (fraction * dense - fixed) / own)))


def _curve(curve):
    """A residual curve as the plan's record holds it (a tuple of floats), or None."""
    return None if curve is None else tuple(float(x) for x in curve)


def _check_group_sizes(sizes, blocks, method) -> None:
    """:class:`SelectionError` unless every query-head module's size is a multiple of its groups."""
    for b in blocks:
        k = sizes.get(ModuleKey(b.index, "attention"), 0)
        if b.groups and k % b.groups:
            raise SelectionError(f"method {method!r}, layer {b.index} attention: {k} query heads cannot be "
                                 f"kept alike in {b.groups} KV groups (a multiple of {b.groups} is needed)")


def _grouped(selection: Selection, block, method) -> Selection:
    """``selection`` of query heads laid out group by group: units ascending, ``w_out``'s columns with them.

    The attention reads query head ``p`` of the pruned layer against KV head
    ``p // m`` (``m`` heads kept per group), so the kept heads must come in
    their groups' order, ``m`` of each: :class:`SelectionError` otherwise.
    """
    position = sorted(range(len(selection.units)), key=lambda i: selection.units[i])  # ascending heads
    units = [selection.units[i] for i in position]
    problem = head_layout_problem(units, block)  # the counts per group; the order is made here
    if problem:
        raise SelectionError(f"method {method!r}, layer {block.index} attention: {problem}")
    if selection.w_in_rows is not None:
        raise SelectionError(f"method {method!r}, layer {block.index} attention: query heads as units keep "
                             "their input rows (a refit of W_Q, W_K, W_V is for whole groups)")
    columns = unit_columns(position, block.unit_size).to(selection.w_out.device)
    return Selection(units, selection.w_out[:, columns], selection.b_out, None)


def _finite_output_map(selection: Selection, dtype, block, part) -> Selection:
    """Every tensor of ``selection`` in the model's ``dtype``, or :class:`NonFiniteWeightError` naming the module."""
    named = [("output map", selection.w_out)]
    if selection.b_out is not None:
        named.append(("output bias", selection.b_out))
    named += [(f"input map {j}'s rows", w) for j, w in enumerate(selection.w_in_rows or ())]
    cast = []
    for what, tensor in named:
        if not torch.isfinite(tensor).all():
            raise NonFiniteWeightError(
                f"layer {block.index} {part}: the new {what} has NaN/Inf entries; the model's weights or "
                "activations are not finite (the layers below are already pruned: reload the model before retrying)"
            )
        c = tensor.to(dtype)
        if not torch.isfinite(c).all():
            raise NonFiniteWeightError(
                f"layer {block.index} {part}: the new {what} overflows {dtype} "
                f"(largest entry {float(tensor.abs().max()):.3g}); raise ridge or prune in float32 "
                "(the layers below are already pruned: reload the model first)"
            )
        cast.append(c)
    b_out = cast[1] if selection.b_out is not None else None
    rows = tuple(cast[2 if b_out is not None else 1:]) if selection.w_in_rows is not None else None
    return Selection(selection.units, cast[0], b_out, rows)


def _targets(blocks, needs, only=None):
    """Capture targets ``{"layer i part": path}`` for ``needs``: the output maps' inputs, the modules' inputs."""
    targets = {}
    for b in blocks:
        for part, out_path, in_path in (("attention", b.attn_out, b.attn_in[0]), ("mlp", b.mlp_out, b.mlp_in[0])):
            if only in (None, part):
                if "activations" in needs:
                    targets[f"layer {b.index} {part}"] = out_path
                if "inputs" in needs:
                    targets[f"layer {b.index} {part} inputs"] = in_path
    return targets


@contextlib.contextmanager
def _weights_swapped(model, weights: dict):
    """The linear maps at the paths of ``weights`` compute with those weights (same shapes) for the duration."""
    saved = {}
    try:
        for path, W in weights.items():
            linear = model.get_submodule(path)
            if tuple(W.shape) != tuple(linear.weight.shape):
                raise ValueError(f"{path}: weights of shape {tuple(W.shape)} for a map of {tuple(linear.weight.shape)}")
            saved[path] = linear.weight.data
            linear.weight.data = W.detach().to(saved[path])
        yield
    finally:
        for path, data in saved.items():
            model.get_submodule(path).weight.data = data


def _module(model, block, part, captured, backend, ridge, *, propagated=False, remeasure=None) -> ModuleStats:
    """What a method sees of ``block``'s attention or MLP, with the current weights.

    ``backend`` (a name or a :class:`~statlab.backends.Backend`) becomes the
    module's backend object, which turns the capture recorders into the data
    its operations take; ``captured`` None (or without this module) leaves the
    statistics None.
    """
    backend = get_backend(backend)
    attention = part == "attention"
    out_map = model.get_submodule(block.attn_out if attention else block.mlp_out)
    W_out = out_map.weight
    in_maps = [model.get_submodule(p) for p in (block.attn_in if attention else block.mlp_in)]
    label = str(ModuleKey(block.index, part))
    captured = captured or {}
    similarity = None if "layer similarity" not in captured else float(captured["layer similarity"][block.index])
    recorder, inputs = captured.get(label), captured.get(f"{label} inputs")
    errors = captured.get("dense error", {})
    return ModuleStats(
        kind=part, layer=block.index, units=block.units if attention else W_out.shape[1],
        unit_size=block.unit_size if attention else 1, W_out=W_out, W_in=tuple(m.weight for m in in_maps),
        stats=None if recorder is None else backend.data(recorder),
        backend=backend, rows=0 if recorder is None else recorder.rows,
        mean=None if recorder is None else recorder.mean,
        inputs=None if inputs is None else backend.data(inputs),
        inputs_mean=None if inputs is None else inputs.mean,
        heads_per_unit=block.heads_per_unit if attention else 1, head_dim=block.head_dim if attention else 0,
        ridge=ridge, b_out=out_map.bias, propagated=propagated, layer_similarity=similarity,
        b_in=tuple(m.bias for m in in_maps), output_error=errors.get(label), inputs_error=errors.get(f"{label} inputs"),
        attention=captured.get("attention", {}).get(label) if attention else None,
        remeasure=remeasure, groups=block.groups if attention else 0,
    )


class _PhaseClock:
    """Wall seconds per phase (``with clock("capture"): ...``), synchronising CUDA at the edges."""

    def __init__(self, model):
        self.device = input_device(model)
        self.seconds = {}

    def __call__(self, phase):
        @contextlib.contextmanager
        def timed():
            start = time.perf_counter()
            try:
                yield
            finally:
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start
        return timed()

    def total(self):
        return sum(self.seconds.values())


def _versions():
    import transformers

    import statlab

    return {"statlab": statlab.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": np.__version__, "python": platform.python_version()}
