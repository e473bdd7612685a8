"""Pruning methods behind one driver (DESIGN §1.5): a comparison changes one word.

``stat`` (the method of this project), the peers ``goa``, ``slimllm`` and
``kwon`` (Kwon et al. 2022: Fisher mask search, rearrangement, LSMR mask
tuning) and ``flap`` (An et al. 2024: fluctuation metric, one global threshold,
bias compensation), and the baselines ``activation``, ``magnitude`` and ``random``. See
:class:`~statlab.methods.base.PruningMethod` for what a method provides.
"""

from __future__ import annotations

import inspect

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


def method_and_ridge(method: str, ridge, *, seed: int = 0, **stat_options) -> tuple[str | PruningMethod, float]:
    """``statlab.prune``'s ``method`` and ``ridge`` from a method name and a ridge that may be ``"gcv"``.

    A number is the driver's fixed relative ridge, and the name goes through as
    it is. ``"gcv"`` is STAT's per-module choice by generalised cross-validation:
    ``(Stat(seed=seed, ridge_rule="gcv"), 0.0)``. ``stat_options`` (e.g.
    ``dense_target=0.5``) configure :class:`Stat` the same way. Only STAT has
    these: asked of another method they are an error, not silently dropped.
    """
    gcv = isinstance(ridge, str) and ridge.strip().lower() == "gcv"
    defaults = inspect.signature(Stat).parameters
    unknown = sorted(set(stat_options) - set(defaults))
    if unknown:
        raise ValueError(f"Stat has no options {unknown}")
    def is_default(value, default):  # 0 for 0.0 is the default; False for 0 or 0.0 for None is not
        return value is default or (not isinstance(value, bool) and not isinstance(default, bool)
                                    and default is not None and value == default)

    stat_options = {name: value for name, value in stat_options.items()
                    if not is_default(value, defaults[name].default)}
    if not gcv and not stat_options:
        return method, float(ridge)
    if method != "stat":
        asked = ["--ridge gcv"] * gcv + [f"{name}={value}" for name, value in stat_options.items()]
        raise ValueError(f"{', '.join(asked)}: STAT's options (--method stat), not {method}'s")
    fixed = 0.0 if gcv else float(ridge)  # an instance's ridge is its own: statlab.prune's is then unused
    return Stat(seed=seed, ridge=fixed, ridge_rule="gcv" if gcv else "fixed", **stat_options), fixed


__all__ = ["METHODS", "get_method", "method_and_ridge", "PruningMethod", "ModuleStats", "Selection", "SizeChoice", "keep_top", "unit_columns",
           "unit_energies", "Stat", "Goa", "SlimLLM", "Kwon", "Flap", "Activation", "Magnitude", "Random"]
