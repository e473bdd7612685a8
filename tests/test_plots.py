"""Figures: the one metric-vs-budget drawing (plots.plot_curve and compare.draw), plot_plan, the kept map, the threshold plot."""

from __future__ import annotations

import numpy as np
import pytest

from statlab import compare, plots

from .test_compare import fake_result


def lines_of(ax):
    return [(l.get_label(), l.get_linestyle(), np.asarray(l.get_xdata()).tolist(), np.asarray(l.get_ydata()).tolist()) for l in ax.lines]


def test_compare_draw_and_plot_curve_draw_the_same_method_lines():
    plt = plots.pyplot()
    result = fake_result("wikitext2")
    fig, (ax0, ax1) = plt.subplots(1, 2)
    compare.draw(result, ax0)
    curve = plots.plot_curve(result["results"], "perplexity")
    ax1 = curve.axes[0]
    dense, *methods = lines_of(ax0)
    assert dense[:2] == ("dense", "--") and np.allclose(dense[3], 0.87)
    assert methods == lines_of(ax1) == [("stat", "-", [0.5, 0.8], [0.84, 0.86]),
                                        ("random", "-", [0.5, 0.8], [0.5, 0.7])]
    assert ax0.get_yscale() == "log" and ax1.get_yscale() == "linear"
    assert ax0.get_xlim()[0] < ax0.get_xlim()[1]  # budgets grow to the right; callers invert if they wish
    assert ax0.get_ylabel() == "wikitext2 perplexity" and ax1.get_ylabel() == "perplexity"
    plt.close(fig)
    plt.close(curve)


def test_plot_plan_masks_the_zero_end_of_the_curves_and_thins_the_layer_ticks():
    import statlab
    from statlab.plan import PruningPlan

    layers = [{"index": i, "attn_units": 3, "attn_kept": [0, 1], "mlp_units": 4, "mlp_kept": [0, 2],
               "attn_residuals": [1.0, 0.5, 0.1, 0.0], "mlp_residuals": [1.0, 0.4, 0.2, 0.05, 0.0]}
              for i in range(30)]
    plan = PruningPlan({"base": "tiny", "method": "stat", "budget": {"sparsity": 0.2}}, layers, {})
    fig = statlab.plots.plot_plan(plan)
    bars, neurons, curves = fig.axes
    assert len(bars.get_xticks()) <= 16 and len(neurons.get_xticks()) <= 16
    line = curves.lines[1]  # layer 0's MLP curve
    y = np.ma.masked_invalid(curves.transData.transform(np.column_stack([line.get_xdata(), line.get_ydata()]))[:, 1])
    assert np.isfinite(y[:-1]).all() and not np.isfinite(y[-1])  # the r = 0 point is masked, not clipped to the axis
    assert len({tuple(l.get_color()) if not isinstance(l.get_color(), str) else l.get_color()
                for l in curves.lines[1::2]}) == 30  # one colour per layer
    statlab.plots.pyplot().close(fig)


def tiny_plan():
    """Three layers with distinct kept sets; layer 2 has fewer units than the others (NaN past them)."""
    from statlab.plan import PruningPlan

    kept = [([2, 0], [5, 1, 3]), ([1], []), ([0, 1], [0, 1, 2, 3])]
    units = [(3, 6), (3, 6), (2, 4)]
    layers = [{"index": i, "attn_units": a, "attn_kept": ka, "mlp_units": m, "mlp_kept": km}
              for i, ((ka, km), (a, m)) in enumerate(zip(kept, units))]
    return PruningPlan({"base": "tiny", "method": "stat", "budget": {"mac_fraction": 0.5}}, layers, {})


def test_plot_kept_units_draws_each_layers_kept_set_in_its_row():
    plan = tiny_plan()
    fig = plots.plot_kept_units(plan, title="tiny plan")
    heads, neurons = fig.axes
    for ax, kind in ((heads, "attn"), (neurons, "mlp")):
        image = np.ma.filled(ax.images[0].get_array().astype(float), np.nan)
        assert image.shape == (3, max(l[f"{kind}_units"] for l in plan.layers))
        for row, layer in zip(image, plan.layers):
            units = layer[f"{kind}_units"]
            assert set(np.flatnonzero(row[:units] == 1)) == set(layer[f"{kind}_kept"])
            assert set(np.flatnonzero(row[:units] == 0)) == set(range(units)) - set(layer[f"{kind}_kept"])
            assert np.isnan(row[units:]).all()  # units the layer does not have are neither kept nor pruned
        counts = [t.get_text() for t in ax.texts if "/" in t.get_text()]
        assert counts == [f"{len(l[f'{kind}_kept'])}/{l[f'{kind}_units']}" for l in plan.layers]
        assert ax.get_ylabel() == "layer" and ax.get_xlabel()
    # the importance rank sits in the kept head's cell: layer 0 kept head 2 first, head 0 second
    ranks = {(t.get_position(), t.get_text()) for t in heads.texts if "/" not in t.get_text()}
    assert ranks == {((2, 0), "1"), ((0, 0), "2"), ((1, 1), "1"), ((0, 2), "1"), ((1, 2), "2")}
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["kept", "pruned"]
    assert fig._suptitle.get_text() == "tiny plan"
    plots.pyplot().close(fig)


def test_plot_threshold_marks_where_each_weighted_curve_first_reaches_tau():
    from statlab.plan import PruningPlan
    from statlab.reference import budget

    curves = {"attn": [[1.0, 0.6, 0.3, 0.0], [1.0, 0.4, 0.2, 0.0]],
              "mlp": [[1.0, 0.5, 0.35, 0.2, 0.1, 0.0], [1.0, 0.8, 0.6, 0.3, 0.15, 0.0]]}
    weights, tau = np.array([2.0, 1.0]), 0.5
    sizes = {kind: budget.sizes_for_threshold(c, weights, tau) for kind, c in curves.items()}
    assert sizes == {"attn": [3, 1], "mlp": [3, 3]}
    layers = [{"index": i, "attn_units": 3, "attn_kept": list(range(sizes["attn"][i])), "mlp_units": 5,
               "mlp_kept": list(range(sizes["mlp"][i])), "attn_residuals": curves["attn"][i],
               "mlp_residuals": curves["mlp"][i]} for i in range(2)]
    plan = PruningPlan({"base": "tiny", "method": "stat", "budget": {"mac_fraction": 0.5}, "threshold": tau}, layers, {})
    fig = plots.plot_threshold(plan, weights)
    for ax, kind in zip(fig.axes, ("attn", "mlp")):
        lines = ax.lines
        tau_line = lines[-1]
        assert np.allclose(tau_line.get_ydata(), tau)
        for i in range(2):
            curve, dot = lines[2 * i], lines[2 * i + 1]
            assert np.allclose(curve.get_ydata(), weights[i] * np.asarray(curves[kind][i]))
            k = sizes[kind][i]
            assert dot.get_xdata().tolist() == [k] and np.allclose(dot.get_ydata(), weights[i] * curves[kind][i][k])
            assert weights[i] * curves[kind][i][k] <= tau < weights[i] * curves[kind][i][k - 1]
        assert ax.get_yscale() == "log" and ax.get_ylim()[0] > 0
    plots.pyplot().close(fig)
    with pytest.raises(ValueError, match="threshold"):
        plots.plot_threshold(PruningPlan({**plan.meta, "threshold": None}, layers, {}), weights)
