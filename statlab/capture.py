"""Capture of the activations STAT decomposes, by forward pre-hooks.

For every block the inputs of its two output maps are what matters: the
attention context (input of ``W_O``) and the MLP activations ``Z`` (input of
``W2``). Hooks stream them, padding excluded, into Gram accumulators (fast
backend) or into NumPy matrices (reference backend).
"""

from __future__ import annotations

import copy
import os

import torch
from accelerate.hooks import remove_hook_from_module
from accelerate.utils import send_to_device
from tqdm import tqdm

from statlab.backends import BACKENDS, MatrixRecorder, get_backend  # noqa: F401  (MatrixRecorder: its old home)
from statlab.inputs import check_calibration, model_inputs
from statlab.offload import align_hook, execution_device
from statlab.surgery import replace_module, unit_rows  # unit_rows: a unit's rows of W_in are its columns of W_out


def _linear(model, label, path):
    """The linear map a capture target names, or a ValueError saying what the path is instead."""
    try:
        module = model.get_submodule(path)
    except AttributeError:
        raise ValueError(f"capture target {label!r}: the model has no module {path!r}") from None
    if not isinstance(getattr(module, "in_features", None), int):
        raise ValueError(f"capture target {label!r}: {path} is a {type(module).__name__}, not a linear map")
    return module


class _StopForward(Exception):
    """Raised inside a hook once everything wanted from a batch was captured."""


class LayerReplay:
    """Stands in for the blocks below the one being pruned, replaying their cached output.

    Propagating activations through already pruned blocks (DESIGN §1.4) would
    cost a forward through every block below for every block pruned. Instead
    the output of the last pruned block is cached per calibration batch, and
    while block ``l`` is processed, blocks ``0..l-1`` are replaced by modules
    that return that cached output: a pass costs the embeddings plus block ``l``.

    Each pruned module runs once more, not again from scratch: when the
    driver caches the input of a module's output map during its capture
    (``keep=``) and prunes it without touching its input maps, it registers a
    stand-in (:meth:`stand_in`) that forms the pruned module's output from the
    cached input's kept columns and the new output map. So the MLP's capture
    does not re-run the attention above the pruned heads, and the pass that
    records a block's outputs runs neither its attention nor its MLP's input
    maps (DESIGN §1.4; issue 15). The cache holds, for the block being pruned
    and the one below it, the context ``(tokens, units · unit_size)`` and the
    activations ``(tokens, mlp_units)`` in the model's dtype, padding included:
    :func:`cache_fits` says whether that fits; where it does not, the module
    is re-run as before.

    Parameters
    ----------
    model : torch.nn.Module
    layers_path : str
        Path of the ``nn.ModuleList`` of blocks.
    """

    def __init__(self, model, layers_path):
        self.model, self.layers_path = model, layers_path
        self.layers = model.get_submodule(layers_path)
        self.outputs = None  # list over batches of the outputs of block `depth`
        self.depth = -1  # the block whose outputs are cached (-1: none)
        self.batch = 0
        self._saved = []
        self._stand_ins = {}  # block index -> {module path: stand-in} for its pruned modules with cached inputs
        self._swapped = []

    def install(self, upto: int) -> None:
        """Replace blocks ``0..upto-1`` by the replay (no-op while nothing is cached)."""
        if upto > self.depth + 1:
            raise ValueError(f"only the outputs of block {self.depth} are cached; cannot replay up to {upto - 1}")
        if self.outputs is None or upto == 0:
            return
        self._saved = [self.layers[i] for i in range(upto)]
        for i in range(upto):
            self.layers[i] = _Replay(self)

    def restore(self) -> None:
        for i, layer in enumerate(self._saved):
            self.layers[i] = layer
        self._saved = []

    def stand_in(self, block, kind: str, inputs: list, units) -> None:
        """Let ``block``'s pruned ``kind`` (``"attention"``/``"mlp"``) answer from its cached output-map inputs.

        ``inputs``: per calibration batch, the input of the output map as the
        capture saw it before pruning, ``(batch, seq, units · unit_size)`` or
        ``(batch, seq, mlp_units)``; ``units``: the kept units, in the order the
        surgery laid them out. Call it after the surgery, only when the input
        maps kept their rows (a refit changes the context) and, for attention,
        when a unit is left.
        """
        attention = kind == "attention"
        path, out_path = (block.attention, block.attn_out) if attention else (block.mlp, block.mlp_out)
        columns = unit_rows(torch.as_tensor(list(units), dtype=torch.int64), block.unit_size if attention else 1)
        out = self.model.get_submodule(out_path) if out_path.startswith(path + ".") else None
        self._stand_ins.setdefault(block.index, {})[path] = _CachedOutput(self, inputs, columns, out, attention)

    def _swap_in(self, upto: int) -> None:
        """Put the stand-ins of blocks ``<= upto`` in place of their modules (restored by :meth:`_swap_out`)."""
        for index in sorted(i for i in self._stand_ins if i <= upto):
            for path, module in self._stand_ins[index].items():
                self._swapped.append((path, self.model.get_submodule(path)))
                replace_module(self.model, path, module)

    def _swap_out(self) -> None:
        for path, module in reversed(self._swapped):
            replace_module(self.model, path, module)
        self._swapped = []

    def capture(self, batches, block, targets, **options) -> dict:
        """:func:`capture` of ``targets`` inside ``block``, computed through the pruned blocks below it.

        Blocks up to ``depth`` replay their cached outputs; the ones above run,
        with the stand-ins of their pruned modules in place. When the block just
        below was pruned since, its outputs are cached on the way (and its
        stand-ins' cached inputs let go), so each pruned block runs once more,
        not once per block above. ``options`` go to :func:`capture`
        (``backend``, ``precision``, ``desc``, ``keep``).
        """
        below = block.index - 1
        record = below > self.depth
        model = self.model
        self.install(self.depth + 1)
        self._swap_in(block.index)
        try:
            got = capture(model, batches, targets, replay=self,
                          outputs_of=f"{self.layers_path}.{below}" if record else None, **options)
        finally:
            self._swap_out()
            self.restore()
        if record:
            self.outputs, self.depth = got.pop("outputs"), below
            for index in [i for i in self._stand_ins if i <= below]:
                del self._stand_ins[index]
        return got


class _Replay(torch.nn.Module):
    def __init__(self, replay):
        super().__init__()
        self.replay = [replay]  # a list, so the replay is not registered as a submodule

    def forward(self, *args, **kwargs):
        replay = self.replay[0]
        return replay.outputs[replay.batch]


class _CachedOutput(torch.nn.Module):
    """A pruned attention or MLP module answering from its cached output-map input (:meth:`LayerReplay.stand_in`).

    Returns ``out(Z[..., columns])`` when the output map ``out`` is inside the
    module, else ``Z[..., columns]`` (the map outside applies itself);
    attention modules return it first in a 2-tuple, as the adapters' modules do
    (:class:`statlab.models.base.Block`).
    """

    def __init__(self, replay, inputs, columns, out, attention):
        super().__init__()
        self.replay, self.out = [replay], [out]  # lists: neither is registered as a submodule
        self.inputs, self.attention = inputs, attention
        self.columns = {columns.device: columns}  # the kept columns' indices, per device they were needed on

    def forward(self, *args, **kwargs):
        Z = self.inputs[self.replay[0].batch]
        if Z.device not in self.columns:
            self.columns[Z.device] = next(iter(self.columns.values())).to(Z.device)
        y = Z.index_select(-1, self.columns[Z.device])
        if self.out[0] is not None:
            y = self.out[0](y)
        return (y, None) if self.attention else y


class DenseStream:
    """The calibration's hidden states through the *dense* blocks, beside the pruning (the ``dense_outputs`` need).

    Methods whose corrections aim at the dense model's outputs (GOA's
    recovery, Kwon et al.'s mask tuning) need, for every module, the cross
    moment ``Z'ᵀ(Z − Z')`` of the input ``Z'`` its output map gets in the
    pruned model with the input ``Z`` the dense model gives it on the same
    tokens (and ``x'ᵀ(x − x')`` of the module inputs). The stream holds the
    dense inputs of one block per calibration batch and a copy of that block
    taken before its surgery; while :func:`capture` runs the block (through
    the pruned ones below), the copy runs on the same batch's dense inputs
    first, with the same masks and position embeddings, so both activations
    meet in the capture's hooks one batch at a time. The pass that captures a
    block's MLP also records the copy's outputs: the next block's dense inputs.

    Blocks are visited bottom-up, each :meth:`begin` before its surgery.
    Memory: one block's weights and ``tokens × d`` hidden states in the
    model's dtype.
    """

    def __init__(self, model, layers_path):
        self.model, self.layers_path = model, layers_path
        self.index = -1  # the block whose dense copy runs (-1: none yet)
        self.block = None  # that copy
        self.inputs = None  # per batch its dense inputs; None at block 0, whose inputs are the model's own
        self.outputs = {}  # batch -> the copy's outputs, recorded while the block's MLP is captured

    @property
    def path(self) -> str:
        return f"{self.layers_path}.{self.index}"

    def begin(self, index: int) -> None:
        """Take block ``index`` (still dense) as the stream's block; its dense inputs are the last one's outputs."""
        if index == self.index:
            return
        if index != self.index + 1:
            raise RuntimeError(f"the dense stream is at block {self.index}: blocks must be visited bottom-up "
                               f"(asked for {index})")
        if index > 0:
            if not self.outputs:
                raise RuntimeError(f"block {self.index}'s dense outputs were never recorded (capture its MLP "
                                   "with record_dense=True)")
            self.inputs = [self.outputs[b] for b in sorted(self.outputs)]
        self.outputs = {}
        layer = self.model.get_submodule(f"{self.layers_path}.{index}")
        # accelerate's hooks (and their maps of offloaded weights) stay with the model: the copy is plain
        keep = {id(h.weights_map): h.weights_map for m in layer.modules()
                if (h := align_hook(m)) is not None and h.weights_map is not None}
        self.block = copy.deepcopy(layer, keep)
        remove_hook_from_module(self.block, recurse=True)
        self.index = index

    def run(self, batch: int, args, kwargs, record: dict, *, full: bool) -> dict:
        """The dense copy on ``batch``: ``{label: input of the submodule at record[label]}`` (relative paths).

        ``args``/``kwargs``: the call the pruned block received (its hidden
        states are replaced by the dense ones). ``full`` runs the whole block
        and keeps its outputs for the next block; otherwise it stops once every
        recorded input was seen.
        """
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        if self.inputs is not None:
            hidden = self.inputs[batch]
        device = next(self.block.parameters()).device
        hidden, rest, kwargs = send_to_device((hidden, tuple(args[1:]), kwargs), device)
        got, handles = {}, []
        for label, path in record.items():
            def hook(module, inputs, label=label):
                got[label] = inputs[0]
                if not full and len(got) == len(record):
                    raise _StopForward
            handles.append(self.block.get_submodule(path).register_forward_pre_hook(hook))
        try:
            out = self.block(hidden, *rest, **kwargs)
        except _StopForward:
            out = None
        finally:
            for h in handles:
                h.remove()
        if full:
            self.outputs[batch] = out[0] if isinstance(out, (tuple, list)) else out
        return got


def cache_bytes(batches, width: int, dtype) -> int:
    """Bytes of one output-map input cached over ``batches``: padded tokens × ``width`` × the dtype's size."""
    tokens = sum(int(b["input_ids"].numel()) for b in batches)
    return tokens * width * dtype.itemsize


CACHE_SHARE = 0.25
"""Share of a device's free memory the cached output-map inputs of one module may take (:func:`cache_fits`).

Two blocks' inputs are held at once (the block being pruned and the one
below, until its outputs are recorded): up to four modules' worth.
"""


def cache_fits(nbytes: int, device) -> bool:
    """Whether ``nbytes`` of cached activations fit in :data:`CACHE_SHARE` of ``device``'s free memory now."""
    device = torch.device(device)
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = _available_host_memory()
    return nbytes <= CACHE_SHARE * free


def _available_host_memory() -> int:
    """Bytes of host memory available to new allocations (Linux ``MemAvailable``; else the free pages; else 0)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def capture(model, batches, targets, *, backend="fast", stop_early=True, desc=None,
            replay: LayerReplay | None = None, outputs_of: str | None = None, precision="fp64", keep=(),
            similarity_of: str | None = None, dense: DenseStream | None = None, record_dense: bool = False,
            attention_of: dict | None = None, summarise=None):
    """Run the calibration batches and collect the inputs of the named linear maps.

    Parameters
    ----------
    model : torch.nn.Module
    batches : list of dict
        Tokenised calibration batches (``input_ids``, ``attention_mask``, ...).
    targets : dict[str, str]
        ``{label: path of an nn.Linear}``; its input ``(batch, seq, in)`` is captured.
    backend : {"fast", "reference"}
        Gram accumulators on the model's device, or fp64 matrices on the CPU.
    precision : {"fp64", "fp32", "tf32"}
        Accumulation type of the Grams (fast backend).
    stop_early : bool
        Stop each forward once every target has been seen (layers above are
        not needed).
    replay : LayerReplay, optional
        Told which batch is running, so replayed blocks return its cached output.
    outputs_of : str, optional
        Path of a block whose outputs are recorded, one per batch, under the
        key ``"outputs"`` (the forward stops there when ``stop_early``).
    keep : iterable of str
        Labels of ``targets`` whose inputs are also kept as they came, one
        tensor ``(batch, seq, in)`` per batch, padding included, under the key
        ``"kept"``: ``{label: list}`` (for :meth:`LayerReplay.stand_in`).
    similarity_of : str, optional
        Path of the ``nn.ModuleList`` of blocks: the mean cosine between each
        block's input and output hidden states over the non-padded tokens,
        ``(blocks,)`` float64 under the key ``"layer similarity"`` (SlimLLM's
        ``s_l``); the forward then runs through the last block.
    dense : DenseStream, optional
        Pair every target inside the stream's block with the dense model's:
        ``Z'ᵀ(Z − Z')`` (in, in) fp64 on the map's device, under the key
        ``"dense error"``: ``{label: Tensor}`` (padding excluded), whichever
        the backend. ``record_dense`` also records the dense block's outputs
        (:meth:`DenseStream.run`'s ``full``).
    attention_of : dict[str, str], optional
        ``{label: path of an attention module}`` whose forward returns its
        probabilities second (run it inside the adapter's ``attention_maps``):
        ``summarise(probs (batch, heads, q, k), rows)`` (``rows`` the bool
        mask of real query positions ``(batch, q)``, or None) is summed over
        the batches and divided by the number of real query positions, under
        the key ``"attention"``: ``{label: Tensor or None}`` (None where the
        module returned no probabilities).

    Returns
    -------
    dict[str, statlab.fast.GramAccumulator | statlab.backends.MatrixRecorder | list | dict]

    Raises
    ------
    TypeError, CalibrationError
        Batches :func:`statlab.inputs.check_calibration` refuses.
    ValueError
        An unknown backend, or a target that is not a linear map of the model.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    check_calibration(batches, model)
    recorders, handles = {}, []
    kept = {label: [] for label in keep}
    unknown = set(kept) - set(targets)
    if unknown:
        raise ValueError(f"keep names labels that are not capture targets: {sorted(unknown)}")
    state = {"mask": None, "seen": set(), "batch": 0, "dense": {}}
    paired, errors = {}, {}
    if dense is not None:
        prefix = dense.path + "."
        paired = {label: path[len(prefix):] for label, path in targets.items() if path.startswith(prefix)}

        def enter(module, args, kwargs):
            state["dense"] = dense.run(state["batch"], args, kwargs, paired, full=record_dense)

        handles.append(model.get_submodule(dense.path).register_forward_pre_hook(enter, with_kwargs=True))
    for label, path in targets.items():
        linear = _linear(model, label, path)
        n = linear.in_features
        # on the device the map computes on: a dispatched model's blocks may sit on several
        recorders[label] = get_backend(backend).recorder(n, label, device=execution_device(linear), precision=precision)

        def hook(module, args, label=label):
            recorders[label].update(args[0], state["mask"])
            if label in paired:
                _add_error(errors, label, args[0], state["dense"][label], state["mask"])
            if label in kept:
                kept[label].append(args[0].detach())
            state["seen"].add(label)
            if stop_early and state["seen"] >= wanted:
                raise _StopForward

        handles.append(linear.register_forward_pre_hook(hook))
    outputs = []
    if outputs_of is not None:
        def record_output(module, args, output):
            outputs.append(output)
            state["seen"].add("outputs")
            if stop_early and state["seen"] >= wanted:
                raise _StopForward

        handles.append(model.get_submodule(outputs_of).register_forward_hook(record_output))
    similarity = None
    if similarity_of is not None:
        blocks = model.get_submodule(similarity_of)
        similarity = {"sums": torch.zeros(len(blocks), dtype=torch.float64), "inputs": {}}
        for i, block in enumerate(blocks):
            def before(module, args, kwargs, i=i):
                similarity["inputs"][i] = args[0] if args else kwargs["hidden_states"]

            def after(module, args, kwargs, output, i=i):
                out = output[0] if isinstance(output, (tuple, list)) else output
                cos = torch.nn.functional.cosine_similarity(out.double(), similarity["inputs"].pop(i).double(), dim=-1)
                mask = state["mask"]
                similarity["sums"][i] += (cos.sum() if mask is None else cos[mask.to(cos.device)].sum()).cpu()
                if i == len(blocks) - 1:
                    state["seen"].add("layer similarity")
                    if stop_early and state["seen"] >= wanted:
                        raise _StopForward

            handles.append(block.register_forward_pre_hook(before, with_kwargs=True))
            handles.append(block.register_forward_hook(after, with_kwargs=True))
    attention = {}
    if attention_of:
        if summarise is None:
            raise ValueError("attention_of needs summarise, the reduction of one batch's attention probabilities")
        attention = {label: None for label in attention_of}
        for label, path in attention_of.items():
            def probabilities(module, args, output, label=label):
                probs = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
                if probs is not None:
                    part = summarise(probs.detach(), state["mask"])
                    attention[label] = part if attention[label] is None else attention[label] + part
                state["seen"].add(f"{label} attention")
                if stop_early and state["seen"] >= wanted:
                    raise _StopForward

            handles.append(model.get_submodule(path).register_forward_hook(probabilities))
    queries = 0
    wanted = (set(recorders) | ({"outputs"} if outputs_of is not None else set())
              | ({"layer similarity"} if similarity is not None else set())
              | {f"{label} attention" for label in attention})
    try:
        with torch.no_grad():
            for i, batch in enumerate(tqdm(batches, desc=desc or "capture", leave=False, disable=None)):
                if replay is not None:
                    replay.batch = i
                state["batch"] = i
                batch = model_inputs(model, batch)
                mask = batch.get("attention_mask")
                state["mask"] = None if mask is None else mask.bool()
                queries += int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
                state["seen"] = set()
                try:
                    model(**batch)
                except _StopForward:
                    pass
    finally:
        for h in handles:
            h.remove()
    if outputs_of is not None:
        recorders["outputs"] = outputs
    if kept:
        recorders["kept"] = kept
    if similarity is not None:
        recorders["layer similarity"] = (similarity["sums"] / max(queries, 1)).numpy()
    if dense is not None:
        recorders["dense error"] = errors
    if attention_of:
        recorders["attention"] = {label: None if a is None else a / max(queries, 1) for label, a in attention.items()}
    return recorders


def _add_error(errors: dict, label: str, pruned: torch.Tensor, dense: torch.Tensor, mask) -> None:
    """``errors[label] += Z'ᵀ(Z − Z')`` over the real tokens of one batch, in fp64 on ``Z'``'s device."""
    n = pruned.shape[-1]
    Zp = pruned.reshape(-1, n).to(torch.float64)
    Z = dense.reshape(-1, n).to(device=Zp.device, dtype=torch.float64)
    if mask is not None:
        rows = mask.reshape(-1).to(Zp.device)
        Zp, Z = Zp[rows], Z[rows]
    part = Zp.T @ (Z - Zp)
    errors[label] = part if label not in errors else errors[label] + part
