"""Figures: what a plan kept per layer, and the error curves that chose it."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pyplot():
    """matplotlib.pyplot, on the Agg backend outside notebooks (figures are saved, not shown)."""
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg",) and not _in_notebook():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"


def plot_plan(plan, path=None, *, title=None):
    """Kept heads and neurons per layer (bars) and every layer's residual curves.

    Parameters
    ----------
    plan : PruningPlan
    path : str or Path, optional
        Where to save a PNG (written atomically).
    title : str, optional
        Goes above the figure; say what produced it.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = pyplot()
    layers = plan.layers
    x = np.arange(len(layers))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key, units, label in ((axes[0], "attn_kept", "attn_units", "attention units"),
                                  (axes[1], "mlp_kept", "mlp_units", "MLP neurons")):
        ax.bar(x, [l[units] for l in layers], color="0.85", label="dense")
        ax.bar(x, [len(l[key]) for l in layers], color="C0", label="kept")
        ax.set_xlabel("layer")
        ax.set_ylabel(label)
        ax.set_xticks(x[::max(1, -(-len(x) // 16))])  # at most 16 labels: 30 layers' ticks would overlap
        ax.legend(loc="lower right", fontsize=8)
    ax = axes[2]
    # up to 10 layers: the qualitative cycle; more: one sequential map, bottom (dark) to top (light)
    colors = [f"C{i}" for i in range(len(layers))] if len(layers) <= 10 else \
        [plt.cm.viridis(i / (len(layers) - 1)) for i in range(len(layers))]
    for i, l in enumerate(layers):
        for key, style in (("attn_residuals", "--"), ("mlp_residuals", "-")):
            curve = l.get(key)
            if curve:
                frac = np.arange(len(curve)) / (len(curve) - 1)
                ax.plot(frac, curve, style, color=colors[i], lw=1,
                        label=f"layer {i}" if key == "mlp_residuals" else None)
    ax.set_xlabel("fraction of units kept")
    ax.set_ylabel("relative output error")
    ax.set_title("residual curves (— MLP, -- attention; r = 0 at all units kept is not drawn)", fontsize=9)
    ax.set_yscale("log", nonpositive="mask")  # r(units) = 0 would be clipped into a vertical drop
    ax.set_ylim(1e-3, 1.2)
    ax.legend(fontsize=7, ncol=2)
    budget = ", ".join(f"{k}={v}" for k, v in plan.meta["budget"].items())
    fig.suptitle(title or f"{plan.meta['base']}: {plan.meta['method']} at {budget}", fontsize=10)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


def draw_metric_vs_budget(ax, results, metric, *, dense=None, log=False, xlabel="MAC fraction kept",
                          ylabel=None, title="", grid=False, legend_fontsize=None):
    """Draw ``metric`` against the MAC budget on ``ax``, one ``o-`` line per method.

    The one metric-vs-budget drawing: :func:`plot_curve` and
    :func:`statlab.compare.draw` call it. The x-axis grows to the right (a
    caller wanting heavier pruning to the right inverts it).

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    results : list of dict
        Each with ``method``, ``budget`` (MAC fraction kept) and ``metrics``;
        lines follow the order in which methods first appear, points sorted by budget.
    metric : str
        Key of ``metrics`` to draw.
    dense : float, optional
        The dense model's value, drawn first as a gray dashed line labelled "dense".
    log : bool
        Logarithmic y-axis (perplexity).
    xlabel, ylabel, title : str
        ``ylabel`` defaults to ``metric``; the title is set in 9 pt.
    grid : bool
        A light grid (alpha 0.3).
    legend_fontsize : float or str, optional
        matplotlib's default when None.

    Returns
    -------
    matplotlib.axes.Axes
        ``ax``.
    """
    if dense is not None:
        ax.axhline(dense, color="gray", ls="--", label="dense")
    for method in dict.fromkeys(r["method"] for r in results):
        rows = sorted((r for r in results if r["method"] == method), key=lambda r: r["budget"])
        ax.plot([r["budget"] for r in rows], [r["metrics"][metric] for r in rows], "o-", label=method)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric if ylabel is None else ylabel)
    ax.set_title(title, fontsize=9)
    if grid:
        ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_fontsize)
    return ax


def plot_curve(results, metric, path=None, *, title="", xlabel="MAC fraction kept"):
    """Metric vs budget, one line per method, in a new figure (:func:`draw_metric_vs_budget`, with a grid).

    ``results`` is a list of dicts with ``method``, ``budget`` and ``metrics``;
    ``path``, when given, receives a PNG (written atomically). Returns the figure.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    draw_metric_vs_budget(ax, results, metric, xlabel=xlabel, title=title, grid=True)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


def save_figure(fig, path) -> Path:
    """Write a PNG atomically (:func:`statlab.files.atomic_write`)."""
    from .files import atomic_write

    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
