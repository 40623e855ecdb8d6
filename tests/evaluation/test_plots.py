"""The accuracy-for-compute plot draws the calibration's own target, not a fixed one."""
import math

import numpy as np
import pytest

from tinysaver_det.evaluation.plots import accuracy_compute_figure, plot_accuracy_compute

BASE = {"AP": 40.0, "gflops": 10.0}
SAVER = {"AP": 30.0, "gflops": 2.0}
CURVE = [{"AP": 30.0 + k, "gflops": 2.0 + 0.8 * k, "threshold": 1 - k / 10, "exit_rate": 1 - k / 10}
         for k in range(11)]


def target_lines(fig):
    ax = fig.axes[0]
    return [(line.get_xdata(), line.get_ydata()) for line in ax.get_lines()
            if line.get_label().startswith("target")]


@pytest.mark.parametrize("drop", [0.5, 1.0, 2.5])
def test_the_ap_drop_line_is_at_the_target(drop):
    fig = accuracy_compute_figure({"evaluator": CURVE}, BASE, SAVER, CURVE[8], max_ap_drop=drop)
    ((xs, ys),) = target_lines(fig)
    assert np.allclose(ys, BASE["AP"] - drop)  # a horizontal line at the lowest AP allowed
    assert "<= " + f"{drop:g}" in fig.axes[0].get_legend_handles_labels()[1][-1]


def test_a_gflops_budget_is_drawn_as_the_target_instead():
    fig = accuracy_compute_figure({"evaluator": CURVE}, BASE, SAVER, CURVE[5], max_ap_drop=0.5,
                                  gflops_budget=6.0)
    ((xs, ys),) = target_lines(fig)
    assert np.allclose(xs, 6.0) and not math.isclose(ys[0], BASE["AP"] - 0.5)


def test_plot_is_written(tmp_path):
    path = plot_accuracy_compute({"evaluator": CURVE}, BASE, SAVER, CURVE[8],
                                 str(tmp_path / "plot.png"), max_ap_drop=1.0)
    assert (tmp_path / "plot.png").stat().st_size > 1000 and path.endswith("plot.png")
