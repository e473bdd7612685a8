"""Models larger than one device, through accelerate's hooks: offloaded blocks, dispatched models.

A 7B decoder in bf16 is 13.5 GB of weights; with activations, Grams and
cached layer outputs beside it, it does not fit a 24 GiB GPU. accelerate
solves the placement; statlab only has to work on one block at a time inside
that placement and write each pruned block back where it came from.

Two ways a model's weights live off the compute device:

- ``prune(..., offload=True, device="cuda")`` wraps the prune in
  :class:`OffloadedBlocks`: accelerate's ``AlignDevicesHook(offload=True)`` on
  every module of every block keeps the weights in CPU memory and puts each
  module's on the device only while it runs; everything outside the blocks
  (embeddings, final norm, LM head, rotary tables) moves to the device for the
  whole time. At the end the hooks go and every tensor is back where it was.
- A *dispatched* model, loaded with ``device_map=`` (``load_model(...,
  device_map="auto")``, ``from_pretrained(device_map=...)``): accelerate
  already placed each block on a GPU, in CPU memory or on disk, and the prune
  keeps that placement (:func:`is_dispatched`).

In both, the driver works on block ``l`` inside :func:`resident`: the
offloaded modules of block ``l`` (and ``l - 1``, whose pruned outputs it
replays) hold real weights on their execution device, so the calibration
batches run through them without a transfer per batch, and selection and
surgery read and rewrite them. On leaving, every module of the pruned block —
surgery replaces ``nn.Linear`` objects — is stored back: into the hook's CPU
map, or as new ``.dat`` files in the offload folder for a block on disk (the
original checkpoint is never written), and its parameters go back to ``meta``.
At most two blocks are resident at a time.
"""

from __future__ import annotations

import contextlib

import torch
from accelerate.hooks import AlignDevicesHook, SequentialHook, add_hook_to_module, attach_align_device_hook
from accelerate.hooks import remove_hook_from_module
from accelerate.utils import OffloadedWeightsLoader, PrefixedDataset, named_module_tensors, offload_weight
from accelerate.utils import set_module_tensor_to_device


def align_hook(module) -> AlignDevicesHook | None:
    """The ``AlignDevicesHook`` accelerate attached to ``module`` (directly or in a ``SequentialHook``), or None."""
    hook = getattr(module, "_hf_hook", None)
    hooks = hook.hooks if isinstance(hook, SequentialHook) else (hook,)
    return next((h for h in hooks if isinstance(h, AlignDevicesHook)), None)


def is_dispatched(model) -> bool:
    """Whether accelerate placed ``model`` (``device_map=``): its blocks may sit on several devices or off them."""
    return bool(getattr(model, "hf_device_map", None)) and align_hook(model) is not None


def is_offloaded(module) -> bool:
    """Whether ``module``'s own tensors live off-device behind an offloading hook (``meta`` until it runs)."""
    hook = align_hook(module)
    return hook is not None and hook.offload


def execution_device(module) -> torch.device:
    """Where ``module`` computes: its hook's execution device, else the device of its first real tensor."""
    hook = align_hook(module)
    if hook is not None and hook.execution_device is not None:
        device = hook.execution_device
        return torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.device.type != "meta":
            return tensor.device
    return torch.device("cpu")


def input_device(model) -> torch.device:
    """Where ``model``'s inputs go: the device its embeddings compute on (accelerate's main device when dispatched)."""
    if align_hook(model) is not None and align_hook(model).execution_device is not None:
        return execution_device(model)
    try:
        return execution_device(model.get_input_embeddings())
    except (AttributeError, NotImplementedError):
        return execution_device(model)


def _own_tensors(module, hook):
    return named_module_tensors(module, include_buffers=hook.offload_buffers, recurse=hook.place_submodules,
                                remove_non_persistent=True)


def named_weights(model):
    """``(name, tensor)`` for every entry of ``model.state_dict()``, offloaded ones read from their storage (CPU)."""
    state = model.state_dict(keep_vars=True)
    for path, module in model.named_modules():
        hook = align_hook(module)
        if hook is not None and hook.offload:
            prefix = f"{path}." if path else ""
            for name, _ in _own_tensors(module, hook):
                if prefix + name in state:
                    state[prefix + name] = hook.weights_map[name]
    return state.items()


def _store(weights_map, name: str, tensor: torch.Tensor) -> None:
    """Write ``tensor`` (on the CPU) under ``name`` into an offloading hook's weights map, in the map's own storage."""
    if isinstance(weights_map, PrefixedDataset):
        key, dataset = weights_map.prefix + name, weights_map.dataset
        if isinstance(dataset, OffloadedWeightsLoader):
            if key in dataset.state_dict or dataset.save_folder is None:
                dataset.state_dict[key] = tensor
            else:  # on disk: a new file in the offload folder; a checkpoint the index pointed to stays untouched
                offload_weight(tensor, key, dataset.save_folder, index=dataset.index)
            if key not in dataset.all_keys:
                dataset.all_keys.append(key)
        else:
            dataset[key] = tensor
    else:
        weights_map[name] = tensor


@contextlib.contextmanager
def resident(model, paths, *, write=False, device=None):
    """Real weights for the offloaded modules under ``paths`` for the duration; no-op where nothing is offloaded.

    Parameters
    ----------
    model : torch.nn.Module
    paths : iterable of str
        Module paths (blocks).
    write : bool
        Store the modules back on leaving (they were pruned: new shapes, new
        ``nn.Linear`` objects); otherwise the stored weights stand as they are.
    device : torch.device, optional
        Load onto this device instead of each hook's execution device (the CPU,
        to hand a method weights it reads while other blocks run).
    """
    entries = []
    for path in paths:
        for name, module in model.get_submodule(path).named_modules(prefix=path):
            hook = align_hook(module)
            if hook is not None and hook.offload:
                entries.append((name, module, hook))
    for _, module, hook in entries:
        target = device if device is not None else hook.execution_device
        for name, _ in _own_tensors(module, hook):
            set_module_tensor_to_device(module, name, target, value=hook.weights_map[name])
        hook.offload = False  # the module's own forwards now leave its weights in place
    try:
        yield
    finally:
        for path, module, hook in entries:
            hook.offload = True
            current = model.get_submodule(path)
            if write:
                for name, tensor in _own_tensors(current, hook):
                    _store(hook.weights_map, name, tensor.detach().to("cpu"))
            if current is not module:  # surgery replaced it: the new module gets the same kind of hook
                new = AlignDevicesHook(execution_device=hook.execution_device, offload=True,
                                       io_same_device=hook.io_same_device, weights_map=hook.weights_map,
                                       offload_buffers=hook.offload_buffers, place_submodules=hook.place_submodules,
                                       skip_keys=hook.skip_keys)
                add_hook_to_module(current, new)  # its init puts the tensors on meta
            else:
                for name, _ in _own_tensors(current, hook):
                    set_module_tensor_to_device(current, name, "meta")


def check_placement(*, offload: bool, device, placed: str | None = None) -> None:
    """The ValueError of a placement that contradicts itself (prune, compare, evaluate_model; before any work).

    ``offload`` needs the compute ``device``; ``placed`` names what already
    placed the model (a dispatched model, a ``device_map``), which takes
    neither ``offload`` nor ``device``.
    """
    if placed is not None and (offload or device is not None):
        raise ValueError(f"{placed} places the model itself, each block on its own device: give neither "
                         "offload nor device with it")
    if offload and device is None:
        raise ValueError("offload=True needs the compute device, e.g. device='cuda'")


def streamed(model, device, offload: bool):
    """:class:`OffloadedBlocks` over ``model``'s blocks onto ``device`` when ``offload``, else a no-op context."""
    if not offload:
        return contextlib.nullcontext()
    from statlab.models import get_adapter  # the adapter knows where the blocks are

    return OffloadedBlocks(model, get_adapter(model).layers_path(model), device)


class OffloadedBlocks:
    """Context manager: ``with OffloadedBlocks(model, "model.layers", "cuda"): ...`` (``prune(offload=True)``).

    Inside, every module of every block keeps its weights where they were
    (normally CPU memory) and computes on ``device`` through accelerate's
    offloading hooks; the rest of the model is on ``device``. On leaving, the
    hooks are removed and every tensor, pruned or not, is a real tensor back
    on its original device.

    Attributes
    ----------
    streamed : int
        Block forwards that loaded their weights for the run (outside :func:`resident`).
    """

    def __init__(self, model, layers_path: str, device):
        self.model, self.layers_path, self.device = model, layers_path, torch.device(device)
        self.layers = model.get_submodule(layers_path)
        self.home = next(self.layers.parameters()).device
        self.streamed = 0
        self._handles = []

    def __enter__(self):
        self._move_rest(self.device)
        for i, block in enumerate(self.layers):
            attach_align_device_hook(block, execution_device=self.device, offload=True,
                                     module_name=f"{self.layers_path}.{i}")
            self._handles.append(block.register_forward_pre_hook(self._count))
        return self

    def _count(self, block, args):
        if any(is_offloaded(m) for m in block.modules()):
            self.streamed += 1

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []
        for block in self.layers:
            for module in block.modules():
                hook = align_hook(module)
                if hook is not None and hook.offload:
                    for name, _ in _own_tensors(module, hook):
                        set_module_tensor_to_device(module, name, self.home, value=hook.weights_map[name])
                    hook.offload = False  # nothing left for accelerate's detach to restore
            remove_hook_from_module(block, recurse=True)
        self._move_rest(self.home)
        return False

    def _move_rest(self, device) -> None:
        """Move everything but the blocks: the block list is unhooked from the model meanwhile."""
        parent, _, name = self.layers_path.rpartition(".")
        holder = self.model.get_submodule(parent) if parent else self.model
        setattr(holder, name, torch.nn.ModuleList())
        try:
            self.model.to(device)
        finally:
            setattr(holder, name, self.layers)
