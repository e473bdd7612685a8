"""Baselines: the same kept fraction in every module, no correction (DESIGN §1.5).

``magnitude``
    Units by weight norms: ``||rows of W_in||_F · ||columns of W_out||_F``.
``activation``
    Units by output energy on the calibration data, ``||Z_u W_u^T||_F``
    (Wanda-sp / FLAP style): the simple data-aware baseline.
``random``
    Uniformly random units (seeded): the floor any method must clear.
"""

from __future__ import annotations

import numpy as np

from .base import PruningMethod, keep_top, unit_energies


class Magnitude(PruningMethod):
    name = "magnitude"
    needs = frozenset()  # weights only

    def select(self, module, k):
        W = module.W_out.detach().cpu().float()
        out_norm = W.reshape(W.shape[0], module.units, module.unit_size).square().sum(dim=(0, 2))
        in_norm = sum(w.detach().cpu().float().reshape(module.units, -1).square().sum(1) for w in module.W_in)
        return keep_top(module, (out_norm * in_norm).sqrt().numpy(), k)


class Activation(PruningMethod):
    name = "activation"

    def select(self, module, k):
        return keep_top(module, unit_energies(module), k)


class Random(PruningMethod):
    name = "random"
    needs = frozenset()  # weights only

    def select(self, module, k):
        rng = np.random.default_rng([self.seed, module.layer, module.kind == "mlp"])
        return keep_top(module, rng.permutation(module.units).astype(np.float64), k)
