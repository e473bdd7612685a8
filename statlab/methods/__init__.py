"""Pruning methods behind one driver (DESIGN §1.5): a comparison changes one word.

``stat`` (the method of this project), the peers ``goa``, ``slimllm`` and
``kwon`` (Kwon et al. 2022: Fisher mask search, rearrangement, LSMR mask
tuning) and ``flap`` (An et al. 2024: fluctuation metric, one global threshold,
bias compensation), and the baselines ``activation``, ``magnitude`` and ``random``. See
:class:`~statlab.methods.base.PruningMethod` for what a method provides.
"""

from __future__ import annotations

from .base import ModuleStats, PruningMethod, Selection, SizeChoice, keep_top, unit_columns, unit_energies
from .baselines import Activation, Magnitude, Random
from .flap import Flap
from .goa import Goa
from .kwon import Kwon
from .slimllm import SlimLLM
from .stat import Stat

METHODS: dict[str, type[PruningMethod]] = {cls.name: cls for cls in (Stat, Goa, SlimLLM, Kwon, Flap, Activation, Magnitude, Random)}


def get_method(name: str, **options) -> PruningMethod:
    """An instance of the method called ``name``; a clear error listing the known ones otherwise."""
    if name not in METHODS:
        raise ValueError(f"method must be one of {tuple(METHODS)}, got {name!r}")
    return METHODS[name](**options)


__all__ = ["METHODS", "get_method", "PruningMethod", "ModuleStats", "Selection", "SizeChoice", "keep_top", "unit_columns",
           "unit_energies", "Stat", "Goa", "SlimLLM", "Kwon", "Flap", "Activation", "Magnitude", "Random"]
