"""Capture of the activations STAT decomposes, by forward pre-hooks.

For every block the inputs of its two output maps are what matters: the
attention context (input of ``W_O``) and the MLP activations ``Z`` (input of
``W2``). Hooks stream them, padding excluded, into Gram accumulators (fast
backend) or into NumPy matrices (reference backend).
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from statlab.backends import BACKENDS, MatrixRecorder, get_backend  # noqa: F401  (MatrixRecorder: its old home)
from statlab.inputs import check_calibration, model_inputs
from statlab.offload import execution_device


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

    def capture(self, batches, block, targets, **options) -> dict:
        """:func:`capture` of ``targets`` inside ``block``, computed through the pruned blocks below it.

        Blocks up to ``depth`` replay their cached outputs; the ones above run.
        When the block just below was pruned since, its outputs are cached on
        the way, so each pruned block runs once more, not once per block above.
        ``options`` go to :func:`capture` (``backend``, ``precision``, ``desc``).
        """
        below = block.index - 1
        record = below > self.depth
        model = self.model
        self.install(self.depth + 1)
        try:
            got = capture(model, batches, targets, replay=self,
                          outputs_of=f"{self.layers_path}.{below}" if record else None, **options)
        finally:
            self.restore()
        if record:
            self.outputs, self.depth = got.pop("outputs"), below
        return got


class _Replay(torch.nn.Module):
    def __init__(self, replay):
        super().__init__()
        self.replay = [replay]  # a list, so the replay is not registered as a submodule

    def forward(self, *args, **kwargs):
        replay = self.replay[0]
        return replay.outputs[replay.batch]


def capture(model, batches, targets, *, backend="fast", stop_early=True, desc=None,
            replay: LayerReplay | None = None, outputs_of: str | None = None, precision="fp64"):
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

    Returns
    -------
    dict[str, statlab.fast.GramAccumulator | statlab.backends.MatrixRecorder | list]

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
    state = {"mask": None, "seen": set()}
    for label, path in targets.items():
        linear = _linear(model, label, path)
        n = linear.in_features
        # on the device the map computes on: a dispatched model's blocks may sit on several
        recorders[label] = get_backend(backend).recorder(n, label, device=execution_device(linear), precision=precision)

        def hook(module, args, label=label):
            recorders[label].update(args[0], state["mask"])
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
    wanted = set(recorders) | ({"outputs"} if outputs_of is not None else set())
    try:
        with torch.no_grad():
            for i, batch in enumerate(tqdm(batches, desc=desc or "capture", leave=False, disable=None)):
                if replay is not None:
                    replay.batch = i
                batch = model_inputs(model, batch)
                mask = batch.get("attention_mask")
                state["mask"] = None if mask is None else mask.bool()
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
    return recorders
