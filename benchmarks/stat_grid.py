"""STAT's option grid, shared by the sweeps: its flags (``add_stat_flags``) and their product (``stat_grid``).

Each flag takes comma-separated values; a grid point is a dict of ``Stat``
keyword arguments (``ridge`` as given: a number or ``gcv``), in the order the
flags are listed, so ``method_and_ridge(method, **point)`` builds it.
"""

from __future__ import annotations

import itertools

PAPER = {"ridge": "0", "dense_target": 0.0, "intercept": False, "split": None, "weighting": True,
         "order": "joint", "keep_modules": False}
"""The grid point of the paper's STAT, and of every other method (which takes none of these options)."""


def split_option(text: str):
    """``Stat(split=...)`` of a ``--splits`` entry: ``none`` (the paper's one threshold), ``proportional`` or a share."""
    return None if text == "none" else text if text == "proportional" else float(text)


def weighting_option(text: str):
    """``Stat(weighting=...)`` of a ``--weightings`` entry: 1 (the model's rule), 0 (none), depth or trend."""
    return {"1": True, "0": False}.get(text, text)


def add_stat_flags(parser, *, own_weighting: str) -> None:
    """The grid's flags; ``own_weighting`` says what ``--weightings 1`` is on the sweep's model."""
    parser.add_argument("--ridges", default="0", help="relative ridges of STAT's corrections, or gcv")
    parser.add_argument("--dense-targets", default="0",
                        help="STAT's dense_target values: the weight of the dense model's outputs in each correction's target")
    parser.add_argument("--intercepts", default="0", help="STAT's intercept settings to run: 0, 1 or 0,1")
    parser.add_argument("--splits", default="none",
                        help="STAT's budget splits between the families: none (one threshold), proportional, or shares of the "
                             "removed cost taken from attention (Stat(split=...))")
    parser.add_argument("--weightings", default="1",
                        help=f"STAT's layer weightings of the error curves, comma-separated: 1 ({own_weighting}), 0 (none), "
                             "depth or trend (Stat(weighting=...))")
    parser.add_argument("--keep-modules", default="0",
                        help="STAT's keep_modules settings to run (no module removed whole): 0, 1 or 0,1")
    parser.add_argument("--orders", default="joint",
                        help="STAT's orders (Stat(order=...)): joint, 'neurons first' or both, comma-separated")


def stat_grid(args, **more) -> list[dict]:
    """Every combination of the flags' values (``more``: further options, name -> list of values, after ``intercept``)."""
    axes = {"ridge": args.ridges.split(","), "dense_target": [float(t) for t in args.dense_targets.split(",")],
            "split": [split_option(x) for x in args.splits.split(",")],
            "intercept": [bool(int(c)) for c in args.intercepts.split(",")], **more,
            "weighting": [weighting_option(w) for w in args.weightings.split(",")],
            "order": args.orders.split(","), "keep_modules": [bool(int(f)) for f in args.keep_modules.split(",")]}
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
