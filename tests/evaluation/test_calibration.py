"""Calibration: threshold sweeps, operating-point choice, calibration files."""

import json
import math

import numpy as np
import pytest

from tinysaver_det.config import read_calibrated_threshold as read_threshold
from tinysaver_det.evaluation.calibration import (
    candidate_thresholds,
    choose_point,
    largest_safe_exit_rate,
    router_scores,
    sweep,
)
from tinysaver_det.flops import compute_saved, routed_gflops
from tinysaver_det.metrics.coco_fast import ImageDets, ImageGT, MatchTable

COSTS = {"saver_gflops": 1.0, "evaluator_gflops": 0.01, "base_gflops": 10.0}


def make_table(n=12, seed=0):
    """Saver right on even images, wrong on odd ones; base right everywhere."""
    rng = np.random.default_rng(seed)
    gts, saver, base = [], [], []
    for i in range(n):
        box = np.array([[10 + i, 20, 40, 30]], dtype=float)
        gts.append(ImageGT(boxes=box, category_ids=[1 + i % 2]))
        base.append(ImageDets(boxes=box, scores=[0.9], category_ids=[1 + i % 2]))
        shifted = box + (0 if i % 2 == 0 else [[30, 0, 0, 0]])
        saver.append(
            ImageDets(boxes=shifted, scores=[rng.uniform(0.3, 0.9)], category_ids=[1 + i % 2])
        )
    return MatchTable.build(gts, {"saver": saver, "base": base})


def test_costs_formula():
    assert routed_gflops(COSTS, 0.0) == pytest.approx(11.01)
    assert routed_gflops(COSTS, 1.0) == pytest.approx(1.01)
    assert compute_saved(COSTS, 0.5) == pytest.approx(1 - (1.01 + 5.0) / 10.0)
    # Compute is saved only when r > c_s + c_e.
    assert compute_saved(COSTS, 0.1) < 0 < compute_saved(COSTS, 0.2)


def test_candidate_thresholds_cover_both_ends_and_observed_scores():
    scores = np.array([0.3, 0.1, np.nan, 0.9, 0.5])
    t = candidate_thresholds(scores, num=5)
    assert t[0] == -math.inf and t[-1] == math.inf
    assert t[1:-1] == sorted(t[1:-1])
    assert set(t[1:-1]) <= {0.1, 0.3, 0.5, 0.9}
    assert candidate_thresholds(np.array([np.nan])) == [math.inf]


def test_sweep_ends_equal_saver_and_base_alone():
    table = make_table()
    scores = np.linspace(0, 1, 12)
    points = sweep(table, scores, COSTS, thresholds=[-math.inf, math.inf])
    saver, base = table.source_metrics("saver"), table.source_metrics("base")
    assert points[0]["exit_rate"] == 1.0 and points[0]["AP"] == pytest.approx(saver["AP"])
    assert points[1]["exit_rate"] == 0.0 and points[1]["AP"] == pytest.approx(base["AP"])
    assert points[1]["AP"] > points[0]["AP"]
    assert points[0]["gflops"] == pytest.approx(1.01)
    assert points[1]["gflops"] == pytest.approx(11.01)


def test_sweep_merges_per_image():
    table = make_table()
    # Exit exactly the even images (where the saver is right): AP equals the base's.
    scores = np.array([1.0 if i % 2 == 0 else 0.0 for i in range(12)])
    point = sweep(table, scores, COSTS, thresholds=[0.5])[0]
    assert point["exit_rate"] == 0.5
    assert point["AP"] == pytest.approx(table.source_metrics("base")["AP"])


def test_nan_scores_never_exit_in_a_sweep():
    table = make_table()
    scores = np.full(12, np.nan)
    scores[:3] = 0.5
    point = sweep(table, scores, COSTS, thresholds=[-math.inf])[0]
    assert point["exit_rate"] == pytest.approx(3 / 12)


def test_choose_point_for_an_ap_drop_takes_the_cheapest_qualifying_point():
    points = [
        {"threshold": 0.9, "AP": 50.0, "gflops": 10.0},
        {"threshold": 0.5, "AP": 49.6, "gflops": 6.0},
        {"threshold": 0.2, "AP": 49.4, "gflops": 3.0},
    ]
    chosen = choose_point(points, base_ap=50.0, max_ap_drop=0.5)
    assert chosen["threshold"] == 0.5 and chosen["target_met"]
    none = choose_point(points, base_ap=60.0, max_ap_drop=0.5)
    assert not none["target_met"] and none["threshold"] == 0.9  # route (almost) everything


def test_choose_point_for_a_budget_takes_the_most_accurate_within_it():
    points = [
        {"threshold": 0.9, "AP": 50.0, "gflops": 10.0},
        {"threshold": 0.5, "AP": 49.6, "gflops": 6.0},
        {"threshold": 0.2, "AP": 45.0, "gflops": 3.0},
    ]
    assert choose_point(points, 50.0, gflops_budget=7.0)["threshold"] == 0.5
    over = choose_point(points, 50.0, gflops_budget=1.0)
    assert over["threshold"] == 0.2 and not over["target_met"]


def test_largest_safe_exit_rate():
    points = [
        {"exit_rate": 0.0, "AP": 50.0},
        {"exit_rate": 0.4, "AP": 50.1},
        {"exit_rate": 0.7, "AP": 49.0},
    ]
    assert largest_safe_exit_rate(points, 50.0) == 0.4
    assert largest_safe_exit_rate(points, 51.0) == 0.0


def test_router_scores():
    records = [
        {"image_id": i, "confidence": 0.1 * i, "saver_ap": 0.5, "base_ap": 0.5 + 0.1 * i}
        for i in range(4)
    ]
    scores = router_scores(records, np.array([3.0, 2.0, 1.0, 0.0]), seed=1)
    assert list(scores) == ["evaluator", "confidence", "random", "oracle"]
    np.testing.assert_allclose(scores["oracle"], [-0.0, -0.1, -0.2, -0.3], atol=1e-12)
    np.testing.assert_allclose(scores["confidence"], [0.0, 0.1, 0.2, 0.3])
    again = router_scores(records, None, seed=1)
    assert "evaluator" not in again
    np.testing.assert_array_equal(again["random"], scores["random"])  # fixed per image and seed


def test_read_threshold(tmp_path):
    path = tmp_path / "calibration.json"
    with pytest.raises(FileNotFoundError, match="calibration.json"):
        read_threshold(str(path))
    path.write_text(json.dumps({"chosen": {"threshold": 0.42}}))
    assert read_threshold(str(path)) == 0.42
    path.write_text(json.dumps({"chosen": {"threshold": math.inf}}))
    assert read_threshold(str(path)) == math.inf
    path.write_text("{not json")
    with pytest.raises(ValueError, match="calibration.json"):
        read_threshold(str(path))
    path.write_text(json.dumps({"chosen": {"threshold": "NaN"}}))
    with pytest.raises(ValueError, match="THRESHOLD"):
        read_threshold(str(path))
