"""The one metric-vs-budget drawing: plots.plot_curve and compare.draw both go through it."""

from __future__ import annotations

import numpy as np

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
