"""Blocks on the accelerator only while they run: pruning a model larger than the GPU's memory.

A 7B decoder in bf16 is 13.5 GB of weights; with activations, Grams and cached
layer outputs beside it, it does not fit a 24 GiB GPU. :class:`BlocksOnDemand`
keeps the model's blocks in CPU memory and moves a block to the compute device
by a forward pre-hook when it is about to run; at most ``resident`` blocks stay
there, the least recently used going back to the CPU. Everything outside the
blocks (embeddings, final norm, LM head, rotary tables) moves to the device
for the whole time.

Traffic: a full forward (the dense pass) moves every block once per batch, so
use few, large calibration batches; a propagated pass runs one block (two when
it records the outputs of the block below), which ``resident=2`` keeps on the
device across batches.
"""

from __future__ import annotations

from collections import OrderedDict

import torch


class BlocksOnDemand:
    """Context manager: ``with BlocksOnDemand(model, "model.layers", "cuda"): ...``.

    Parameters
    ----------
    model : torch.nn.Module
        Its blocks where they should live between uses (normally the CPU).
    layers_path : str
        Path of the ``nn.ModuleList`` of blocks.
    device : str or torch.device
        Where the computation runs.
    resident : int
        Blocks kept on ``device`` at most (least recently used go back first).

    Attributes
    ----------
    moves : list of (int, str)
        ``(block index, "in" | "out")`` for every transfer, in order: what the
        tests and the benchmarks read to count traffic.
    """

    def __init__(self, model, layers_path: str, device, *, resident: int = 2):
        if resident < 1:
            raise ValueError(f"resident must be at least 1, got {resident}")
        self.model, self.layers_path = model, layers_path
        self.device, self.resident = torch.device(device), resident
        self.layers = model.get_submodule(layers_path)
        self.home = next(self.layers.parameters()).device
        self.on_device: OrderedDict[int, torch.nn.Module] = OrderedDict()
        self.moves: list[tuple[int, str]] = []
        self._handles = []

    def __enter__(self):
        self._move_rest(self.device)
        for i, block in enumerate(self.layers):
            self._handles.append(block.register_forward_pre_hook(lambda module, args, i=i: self.fetch(i, module)))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []
        while self.on_device:
            self._evict()
        self._move_rest(self.home)
        return False

    def fetch(self, index: int, block: torch.nn.Module) -> None:
        """Make block ``index`` resident on the device (a no-op when it is)."""
        if index in self.on_device:
            self.on_device.move_to_end(index)
            return
        while len(self.on_device) >= self.resident:
            self._evict()
        block.to(self.device)
        self.on_device[index] = block
        self.moves.append((index, "in"))

    def _evict(self) -> None:
        index, block = self.on_device.popitem(last=False)
        block.to(self.home)
        self.moves.append((index, "out"))

    def _move_rest(self, device) -> None:
        """Move everything but the blocks: the block list is unhooked from the model meanwhile."""
        parent, _, name = self.layers_path.rpartition(".")
        holder = self.model.get_submodule(parent) if parent else self.model
        setattr(holder, name, torch.nn.ModuleList())
        try:
            self.model.to(device)
        finally:
            setattr(holder, name, self.layers)
