"""Calibration plots: the accuracy-for-compute plot draws the calibration's own target; examples."""

import math

import numpy as np
import pytest

from tinysaver_det.evaluation.plots import (
    accuracy_compute_figure,
    example_images,
    plot_accuracy_compute,
    plot_examples,
)

BASE = {"AP": 40.0, "gflops": 10.0}
SAVER = {"AP": 30.0, "gflops": 2.0}
CURVE = [
    {"AP": 30.0 + k, "gflops": 2.0 + 0.8 * k, "threshold": 1 - k / 10, "exit_rate": 1 - k / 10}
    for k in range(11)
]


def target_lines(fig):
    ax = fig.axes[0]
    return [
        (line.get_xdata(), line.get_ydata())
        for line in ax.get_lines()
        if line.get_label().startswith("target")
    ]


@pytest.mark.parametrize("drop", [0.5, 1.0, 2.5])
def test_the_ap_drop_line_is_at_the_target(drop):
    fig = accuracy_compute_figure({"evaluator": CURVE}, BASE, SAVER, CURVE[8], max_ap_drop=drop)
    ((xs, ys),) = target_lines(fig)
    assert np.allclose(ys, BASE["AP"] - drop)  # a horizontal line at the lowest AP allowed
    assert "<= " + f"{drop:g}" in fig.axes[0].get_legend_handles_labels()[1][-1]


def test_a_gflops_budget_is_drawn_as_the_target_instead():
    fig = accuracy_compute_figure(
        {"evaluator": CURVE}, BASE, SAVER, CURVE[5], max_ap_drop=0.5, gflops_budget=6.0
    )
    ((xs, ys),) = target_lines(fig)
    assert np.allclose(xs, 6.0) and not math.isclose(ys[0], BASE["AP"] - 0.5)


def test_plot_is_written(tmp_path):
    path = plot_accuracy_compute(
        {"evaluator": CURVE}, BASE, SAVER, CURVE[8], str(tmp_path / "plot.png"), max_ap_drop=1.0
    )
    assert (tmp_path / "plot.png").stat().st_size > 1000 and path.endswith("plot.png")


def test_examples_show_each_path_with_its_own_boxes(tmp_path):
    from PIL import Image

    from detectron2.data import Metadata

    dicts, records = [], []
    for i in range(4):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((32, 48, 3), 40 * i, np.uint8)).save(path)
        dicts.append({"file_name": str(path)})
        dets = {
            "boxes": np.array([[2.0, 3.0, 10.0, 12.0]], np.float32),
            "scores": np.array([0.9], np.float32),
            "category_ids": np.array([7]),
        }
        records.append({"index": i, "saver": dets, "base": dets})
    scores = np.array([0.9, -np.inf, 0.2, 0.7])
    metadata = Metadata(thing_classes=["a"], thing_dataset_id_to_contiguous_id={7: 0})
    path = plot_examples(
        dicts, records, scores, 0.5, metadata, str(tmp_path / "examples.png"), per_path=2
    )
    assert (tmp_path / "examples.png").stat().st_size > 1000 and path.endswith("examples.png")
    assert example_images(scores, 0.5, per_path=2) == ([0, 3], [1, 2])
