"""statlab — STAT: Shrinking Transformers After Training.

Retraining-free structured pruning of transformers by interpolative
decompositions of activations. ``statlab.reference`` is the readable NumPy/SciPy
ground truth; ``statlab.fast`` the PyTorch path with the same interface.

Importing ``statlab`` imports neither torch nor transformers: submodules load on
first use, so ``statlab.reference`` works where torch is not installed.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("fast", "reference", "backends", "cli", "demo", "id_demo", "data", "calibration", "evaluate", "models",
               "capture", "plan", "methods", "compare", "offload")
_FUNCTIONS = {"prune": "statlab.driver", "CalibrationError": "statlab.driver", "load_pruned": "statlab.plan",
              "PruningPlan": "statlab.plan", "load_model": "statlab.models.loading",
              "calibration_batches": "statlab.calibration"}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _FUNCTIONS:
        return getattr(importlib.import_module(_FUNCTIONS[name]), name)
    raise AttributeError(f"module 'statlab' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES) + list(_FUNCTIONS))
