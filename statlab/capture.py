"""Capture of the activations STAT decomposes, by forward pre-hooks.

For every block the inputs of its two output maps are what matters: the
attention context (input of ``W_O``) and the MLP activations ``Z`` (input of
``W2``). Hooks stream them, padding excluded, into Gram accumulators (fast
backend) or into NumPy matrices (reference backend).
"""

from __future__ import annotations

import os

import torch
from tqdm import tqdm

from statlab.backends import BACKENDS, MatrixRecorder, get_backend  # noqa: F401  (MatrixRecorder: its old home)
from statlab.inputs import check_calibration, model_inputs
from statlab.offload import execution_device
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
            similarity_of: str | None = None):
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
    state = {"mask": None, "seen": set()}
    for label, path in targets.items():
        linear = _linear(model, label, path)
        n = linear.in_features
        # on the device the map computes on: a dispatched model's blocks may sit on several
        recorders[label] = get_backend(backend).recorder(n, label, device=execution_device(linear), precision=precision)

        def hook(module, args, label=label):
            recorders[label].update(args[0], state["mask"])
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
        similarity = {"sums": torch.zeros(len(blocks), dtype=torch.float64), "tokens": 0, "inputs": {}}
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
    wanted = (set(recorders) | ({"outputs"} if outputs_of is not None else set())
              | ({"layer similarity"} if similarity is not None else set()))
    try:
        with torch.no_grad():
            for i, batch in enumerate(tqdm(batches, desc=desc or "capture", leave=False, disable=None)):
                if replay is not None:
                    replay.batch = i
                batch = model_inputs(model, batch)
                mask = batch.get("attention_mask")
                state["mask"] = None if mask is None else mask.bool()
                if similarity is not None:
                    similarity["tokens"] += int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
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
        recorders["layer similarity"] = (similarity["sums"] / max(similarity["tokens"], 1)).numpy()
    return recorders
