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


def method_and_ridge(method: str, ridge, *, seed: int = 0) -> tuple[str | PruningMethod, float]:
    """``statlab.prune``'s ``method`` and ``ridge`` from a method name and a ridge that may be ``"gcv"``.

    A number is the driver's fixed relative ridge, and the name goes through as
    it is. ``"gcv"`` is STAT's per-module choice by generalised cross-validation:
    ``(Stat(seed=seed, ridge_rule="gcv"), 0.0)``. Only STAT has that rule, so
    ``"gcv"`` with another method is an error rather than a silent fixed ridge.
    """
    if not (isinstance(ridge, str) and ridge.strip().lower() == "gcv"):
        return method, float(ridge)
    if method != "stat":
        raise ValueError(f"--ridge gcv is STAT's rule (--method stat), not {method}'s: give a number")
    return Stat(seed=seed, ridge_rule="gcv"), 0.0


__all__ = ["METHODS", "get_method", "method_and_ridge", "PruningMethod", "ModuleStats", "Selection", "SizeChoice", "keep_top", "unit_columns",
           "unit_energies", "Stat", "Goa", "SlimLLM", "Kwon", "Flap", "Activation", "Magnitude", "Random"]
