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


_KINDS = (("attn", "attention units"), ("mlp", "MLP neurons"))  # attention units: heads, or KV groups under GQA


def _layer_ticks(ax, layers):
    """Layer labels on the y-axis, at most 16 of them."""
    rows = np.arange(len(layers))
    step = max(1, -(-len(rows) // 16))
    ax.set_yticks(rows[::step])
    ax.set_yticklabels([str(layers[i]["index"]) for i in rows[::step]])
    ax.set_ylabel("layer")


def kept_map(plan, kind) -> np.ndarray:
    """Which units every layer kept: ``(layers, max units)``, 1 kept, 0 pruned, NaN past a layer's units.

    Parameters
    ----------
    plan : PruningPlan
    kind : {"attn", "mlp"}
        Attention units (heads or KV groups) or MLP neurons; row ``i`` is
        ``plan.layers[i]``, column ``j`` unit ``j`` of that module.

    Returns
    -------
    ndarray of float64, shape (len(plan.layers), max_i units_i)
    """
    if kind not in ("attn", "mlp"):
        raise ValueError(f"kind must be 'attn' or 'mlp', got {kind!r}")
    layers = plan.layers
    grid = np.full((len(layers), max((l[f"{kind}_units"] for l in layers), default=0)), np.nan)
    for row, layer in zip(grid, layers):
        row[:layer[f"{kind}_units"]] = 0.0
        row[list(layer[f"{kind}_kept"])] = 1.0
    return grid


def plot_kept_units(plan, path=None, *, title=None):
    """Which heads and which neurons every layer kept: one row of cells per layer and module.

    Left, the attention units (heads, or KV groups under GQA): a kept cell
    shows its rank in the plan's importance order (1 = first pivot) where
    there are at most 32 units. Right, the MLP neurons as one strip per
    layer, neuron index along x (readable for thousands of neurons); the
    count kept is written at the end of every row. Kept and pruned are two
    colours, explained by a legend below the panels.

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
        Its two axes hold one image each, :func:`kept_map` of ``"attn"`` and ``"mlp"``.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    plt = pyplot()
    layers = plan.layers
    cmap = ListedColormap(["0.87", "C0"]).with_extremes(bad="white")  # bad: units a layer does not have
    fig, axes = plt.subplots(1, 2, figsize=(13, 1.6 + 0.3 * len(layers)), width_ratios=(1, 3), squeeze=True)
    for ax, (kind, label) in zip(axes, _KINDS):
        grid = kept_map(plan, kind)
        ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        ax.set_xlabel(f"{label} (heads / KV groups), index" if kind == "attn" else f"{label}, index")
        _layer_ticks(ax, layers)
        for row, layer in enumerate(layers):
            ax.annotate(f"{len(layer[f'{kind}_kept'])}/{layer[f'{kind}_units']}", (1.01, row),
                        xycoords=("axes fraction", "data"), va="center", fontsize=7)
        if kind == "attn" and grid.shape[1] <= 32:
            ax.set_xticks(np.arange(grid.shape[1]))
            ax.tick_params(axis="x", labelsize=7)
            for row, layer in enumerate(layers):
                for rank, unit in enumerate(layer["attn_kept"], 1):
                    ax.text(unit, row, str(rank), ha="center", va="center", fontsize=6, color="white")
        ax.set_title(f"{label} kept per layer" + (" (number: importance rank)"
                                                 if kind == "attn" and grid.shape[1] <= 32 else ""), fontsize=9)
    fig.legend(handles=[Patch(color="C0", label="kept"), Patch(color="0.87", label="pruned")],
               loc="lower center", ncol=2, fontsize=8, frameon=False)
    budget = ", ".join(f"{k}={v}" for k, v in plan.meta["budget"].items())
    fig.suptitle(title or f"{plan.meta['base']}: {plan.meta['method']} at {budget}", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 0.98, 1))
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_threshold(plan, weights, path=None, *, tau=None, title=None):
    """The weighted error curves ``w · r(k)``, the threshold ``τ`` and the size it chose in every module.

    ``k = min{k : w r(k) <= τ}`` (DESIGN §1.4): each module's size is where
    its weighted curve first reaches the dashed ``τ`` line, marked with a dot.
    Attention left, MLP right; k on x, the weighted error on a log y-axis
    (``r = 0`` at all units kept is masked, not clipped).

    Parameters
    ----------
    plan : PruningPlan
        With the residual curves of its sizes (``attn_residuals``, ``mlp_residuals``).
    weights : array_like, shape (layers,) or (layers, 2)
        The error weight of each layer (both modules), or of each layer's
        attention and MLP; e.g. :func:`statlab.reference.budget.post_ln_layer_weights`.
    path : str or Path, optional
        Where to save a PNG (written atomically).
    tau : float, optional
        The threshold; default ``plan.meta["threshold"]``.
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
        Per axis, one line per layer followed by its marker (a one-point line), then the τ line.
    """
    plt = pyplot()
    layers = plan.layers
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim == 1:
        w = np.repeat(w[:, None], 2, axis=1)
    if w.shape != (len(layers), 2):
        raise ValueError(f"weights must have shape ({len(layers)},) or ({len(layers)}, 2), got {np.shape(weights)}")
    tau = plan.meta.get("threshold") if tau is None else tau
    if tau is None:
        raise ValueError("the plan records no threshold (its sizes did not come from one); pass tau=")
    colors = [f"C{i}" for i in range(len(layers))] if len(layers) <= 10 else \
        [plt.cm.viridis(i / (len(layers) - 1)) for i in range(len(layers))]
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    for ax, (column, (kind, label)) in zip(axes, enumerate(_KINDS)):
        top = 0.0
        for i, layer in enumerate(layers):
            curve = layer.get(f"{kind}_residuals")
            if not curve:
                raise ValueError(f"layer {layer['index']} has no {kind}_residuals: the plan keeps no curves")
            weighted = w[i, column] * np.asarray(curve)
            k = len(layer[f"{kind}_kept"])
            ax.plot(np.arange(len(weighted)), weighted, "-", color=colors[i], lw=1,
                    label=f"layer {layer['index']}" if column == 0 else None)
            ax.plot([k], [weighted[k]], "o", color=colors[i], ms=5)
            top = max(top, float(weighted.max()))
        ax.axhline(tau, color="k", ls="--", lw=1, label=f"τ = {tau:.4g}")
        ax.set_yscale("log", nonpositive="mask")
        ax.set_ylim(tau / 30, 1.5 * top)
        ax.set_xlabel(f"k ({label} kept)")
        ax.set_ylabel("weighted relative error w·r(k)")
        ax.set_title(f"{label}: dot = chosen k, the first k with w·r(k) ≤ τ", fontsize=9)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="center right", fontsize=7,
               ncol=1 if len(layers) <= 16 else 2)
    budget = ", ".join(f"{k}={v}" for k, v in plan.meta["budget"].items())
    fig.suptitle(title or f"{plan.meta['base']}: {plan.meta['method']} at {budget}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.9 if len(layers) <= 16 else 0.84, 1))  # the legend right of the panels
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
