"""
Calibration end to end on cached outputs whose answers are known in advance: ground truth, a base
that is exact on every image and a saver that is exact on some images and wrong on the others. The
sweep, the chosen threshold, the exit rate, the AP of every point and r* / ΔC are computed by hand.
"""

import math

import numpy as np
import pytest

from tinysaver_det.evaluation.calibration import (
    apply_threshold,
    candidate_thresholds,
    choose_point,
    largest_safe_exit_rate,
    sweep,
)
from tinysaver_det.metrics.coco_fast import ImageDets, ImageGT, MatchTable

COSTS = {"saver_gflops": 1.0, "evaluator_gflops": 0.01, "base_gflops": 10.0}
N = 10


def cached_outputs(saver_right):
    """One object per image; the base boxes it exactly; the saver too where saver_right[i], else it
    boxes empty background (IoU 0: a false positive and a miss at every IoU threshold)."""
    gts, saver, base = [], [], []
    for i, right in enumerate(saver_right):
        box = np.array([[10.0 + i, 20.0, 40.0, 30.0]])
        gts.append(ImageGT(boxes=box, category_ids=[1]))
        base.append(ImageDets(boxes=box, scores=[0.9], category_ids=[1]))
        saver_box = box if right else np.array([[150.0, 150.0, 20.0, 20.0]])
        # Wrong boxes score below every right one, so AP has a closed form (ap_with_misses).
        saver.append(ImageDets(boxes=saver_box, scores=[0.8 if right else 0.3], category_ids=[1]))
    return MatchTable.build(gts, {"saver": saver, "base": base})


def ap_with_misses(found: int, total: int = N) -> float:
    """COCO AP (points) when `found` of `total` objects are found, every false positive ranked
    below every true positive: precision 1 at the recall points up to found/total, 0 beyond (COCO's
    101 recall points, compared in floating point as pycocotools does)."""
    return 100.0 * np.count_nonzero(np.linspace(0.0, 1.0, 101) <= found / total) / 101


# The saver is right on the first six images. A perfect score exits them first; a worse one puts a
# wrong image (7) third.
SAVER_RIGHT = [True] * 6 + [False] * 4
GOOD = np.array([0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.4, 0.3, 0.2, 0.1])
MIXED = np.array([0.95, 0.9, 0.5, 0.45, 0.44, 0.43, 0.2, 0.88, 0.1, 0.05])


@pytest.fixture(scope="module")
def table():
    return cached_outputs(SAVER_RIGHT)


def test_saver_and_base_alone(table):
    assert table.source_metrics("base")["AP"] == pytest.approx(100.0)
    assert table.source_metrics("saver")["AP"] == pytest.approx(ap_with_misses(6))


def test_sweep_has_the_hand_computed_ap_at_every_exit_rate(table):
    points = sweep(table, GOOD, COSTS)
    by_rate = {round(p["exit_rate"], 6): p for p in points}
    assert sorted(by_rate) == [k / 10 for k in range(11)]
    for k in range(11):
        p = by_rate[k / 10]
        wrong_exits = max(0, k - 6)  # images 7.. exit only after the six right ones
        assert p["AP"] == pytest.approx(ap_with_misses(N - wrong_exits)), k
        assert p["gflops"] == pytest.approx(1.01 + (1 - k / 10) * 10.0)
        assert p["compute_saved"] == pytest.approx(1 - (0.101 + 1 - k / 10))


def test_the_chosen_point_exits_exactly_the_images_the_saver_gets_right(table):
    points = sweep(table, GOOD, COSTS)
    chosen = choose_point(points, base_ap=100.0, max_ap_drop=0.5)
    assert chosen["target_met"]
    assert chosen["threshold"] == 0.7 and chosen["exit_rate"] == pytest.approx(0.6)
    assert chosen["AP"] == pytest.approx(100.0)
    assert chosen["compute_saved"] == pytest.approx(1 - (0.101 + 0.4))
    # A looser target accepts the first wrong exit: 91/101 of the base's AP is a drop of 9.9 points.
    looser = choose_point(points, base_ap=100.0, max_ap_drop=10.0)
    assert looser["threshold"] == 0.4 and looser["exit_rate"] == pytest.approx(0.7)
    assert looser["AP"] == pytest.approx(ap_with_misses(9))


def test_r_star_and_delta_c_follow_the_score_order(table):
    """r*: the largest exit rate at which the routed AP is still the base's; ΔC = c_s - r*."""
    c_s = COSTS["saver_gflops"] / COSTS["base_gflops"]
    r_good = largest_safe_exit_rate(sweep(table, GOOD, COSTS), 100.0)
    r_mixed = largest_safe_exit_rate(sweep(table, MIXED, COSTS), 100.0)
    assert r_good == pytest.approx(0.6)
    assert r_mixed == pytest.approx(0.2)  # the third image by score is a wrong one
    assert c_s - r_good == pytest.approx(-0.5) and c_s - r_mixed == pytest.approx(-0.1)
    # Any loss, however small, makes an exit rate unsafe.
    points = [{"exit_rate": 0.3, "AP": 50.0}, {"exit_rate": 0.6, "AP": 49.99}]
    assert largest_safe_exit_rate(points, 50.0) == 0.3


def test_a_saver_right_everywhere_exits_everything():
    table = cached_outputs([True] * N)
    points = sweep(table, GOOD, COSTS)
    assert largest_safe_exit_rate(points, 100.0) == 1.0
    chosen = choose_point(points, base_ap=100.0)
    assert chosen["threshold"] == -math.inf and chosen["exit_rate"] == 1.0


def test_tied_scores_exit_together(table):
    scores = np.array([0.9, 0.9, 0.9, 0.5, 0.5, 0.5, 0.5, 0.1, 0.1, 0.1])
    points = sweep(table, scores, COSTS)
    assert [p["threshold"] for p in points] == [-math.inf, 0.1, 0.5, 0.9, math.inf]
    assert [p["exit_rate"] for p in points] == pytest.approx([1.0, 1.0, 0.7, 0.3, 0.0])
    # Exit rate 0.7 takes image 6, where the saver is wrong.
    assert points[2]["AP"] == pytest.approx(ap_with_misses(9))
    assert choose_point(points, 100.0)["threshold"] == 0.9


def test_apply_threshold_on_another_split(table):
    """A threshold chosen on one split, applied to another's scores (not one of its candidates)."""
    other = cached_outputs([True, False] * 5)
    scores = np.linspace(1.0, 0.1, N)  # the first four images score above 0.65
    point = apply_threshold(other, scores, 0.65, COSTS)
    assert point["threshold"] == 0.65
    assert point["exit_rate"] == pytest.approx(0.4)
    assert point["AP"] == pytest.approx(ap_with_misses(8))  # images 1 and 3 exit wrong
    assert point["gflops"] == pytest.approx(1.01 + 0.6 * 10.0)
    assert apply_threshold(other, scores, math.inf, COSTS)["AP"] == pytest.approx(100.0)
    assert 0.65 not in candidate_thresholds(scores)


POINTS = [
    {"threshold": math.inf, "exit_rate": 0.0, "AP": 50.0, "gflops": 11.0},
    {"threshold": 0.8, "exit_rate": 0.3, "AP": 49.5, "gflops": 8.0},
    {"threshold": 0.6, "exit_rate": 0.5, "AP": 49.25, "gflops": 6.0},
    {"threshold": 0.5, "exit_rate": 0.5, "AP": 49.0, "gflops": 6.0},
    {"threshold": -math.inf, "exit_rate": 1.0, "AP": 40.0, "gflops": 1.0},
]


def test_choose_point_at_the_exact_boundary():
    # AP 49.5 is exactly base - 0.5: it qualifies; a hair lower does not.
    assert choose_point(POINTS, base_ap=50.0, max_ap_drop=0.5)["threshold"] == 0.8
    assert choose_point(POINTS, base_ap=50.0 + 1e-6, max_ap_drop=0.5)["threshold"] == math.inf
    # A budget exactly at a point's cost admits it.
    assert choose_point(POINTS, 50.0, gflops_budget=8.0)["threshold"] == 0.8


def test_choose_point_breaks_ties_by_accuracy():
    # Two points cost 6.0 GFLOPs; both qualify at a drop of 1.0: the more accurate one is taken.
    chosen = choose_point(POINTS, base_ap=50.0, max_ap_drop=1.0)
    assert chosen["threshold"] == 0.6 and chosen["AP"] == 49.25
    assert choose_point(POINTS[::-1], base_ap=50.0, max_ap_drop=1.0)["threshold"] == 0.6
    assert choose_point(POINTS, 50.0, gflops_budget=6.0)["threshold"] == 0.6


def test_choose_point_routes_everything_when_no_point_qualifies():
    # Even the base-only point fails the target.
    chosen = choose_point(POINTS[:0:-1], base_ap=60.0, max_ap_drop=0.5)
    assert chosen["threshold"] == 0.8 and not chosen["target_met"]  # the most routed point offered
    chosen = choose_point(POINTS[::-1], base_ap=60.0, max_ap_drop=0.5)
    assert chosen["threshold"] == math.inf and chosen["exit_rate"] == 0.0
    assert not chosen["target_met"]


# --- the bootstrap choice ------------------------------------------------------------------------
def lucky_split():
    """
    40 images of one object. By score: 20 where saver and base are both exact, 5 where the saver
    misses, 5 where the base misses and the saver is exact, 10 where the saver misses. At 30 exits
    the two middle blocks cancel on this sample, so the cheapest passing point lies beyond a stretch
    that fails: a lucky point.
    """
    kinds = ["same"] * 20 + ["saver_wrong"] * 5 + ["base_wrong"] * 5 + ["saver_wrong"] * 10
    score_of = {"same": 0.9, "saver_wrong": 0.5, "base_wrong": 0.4}
    gts, saver, base, scores = [], [], [], []
    miss = np.array([[150.0, 150.0, 20.0, 20.0]])
    for i, kind in enumerate(kinds):
        box = np.array([[10.0 + i, 20.0, 40.0, 30.0]])
        gts.append(ImageGT(boxes=box, category_ids=[1]))
        base.append(
            ImageDets(
                boxes=miss if kind == "base_wrong" else box,
                scores=[0.3 if kind == "base_wrong" else 0.9],
                category_ids=[1],
            )
        )
        saver.append(
            ImageDets(
                boxes=miss if kind == "saver_wrong" else box,
                scores=[0.3 if kind == "saver_wrong" else 0.8],
                category_ids=[1],
            )
        )
        scores.append(score_of[kind] if i < 30 else 0.1)
    return gts, saver, base, np.array(scores)


def test_bootstrap_choice_rejects_the_lucky_cheapest_point():
    from tinysaver_det.evaluation.bootstrap import bootstrap_ap_drops
    from tinysaver_det.evaluation.calibration import choose_point_bootstrap
    from tinysaver_det.evaluation.coco_sweep import SweepTable

    gts, saver, base, scores = lucky_split()
    table = SweepTable.build(gts, saver, base)
    thresholds = candidate_thresholds(scores)
    points = sweep(table, scores, COSTS, thresholds)
    base_ap = table.source_metrics("base")["AP"]
    drop = {p["exit_rate"]: base_ap - p["AP"] for p in points}
    assert drop[0.5] == 0.0 and drop[0.625] > 5 and abs(drop[0.75]) <= 0.5  # the lucky point
    assert choose_point(points, base_ap, max_ap_drop=0.5)["exit_rate"] == 0.75

    drops = bootstrap_ap_drops(gts, saver, base, {"r": scores}, {"r": thresholds}, samples=60)["r"]
    assert drops.shape == (60, len(thresholds))
    by_rate = {p["exit_rate"]: drops[:, i] for i, p in enumerate(points)}
    assert np.all(by_rate[0.5] == 0.0)  # exits where the saver equals the base: no resample loses
    assert np.quantile(by_rate[0.75], 0.9) > 0.5  # the lucky point fails on its upper bound
    chosen = choose_point_bootstrap(points, drops, max_ap_drop=0.5, level=0.9)
    assert chosen["exit_rate"] == 0.5 and chosen["ap_drop_ucb"] == 0.0


def test_bootstrap_choice_is_monotone_and_never_skips_a_failing_point():
    from tinysaver_det.evaluation.calibration import choose_point_bootstrap

    rates = [0.0, 0.2, 0.4, 0.6, 0.8]
    points = [{"threshold": 1 - r, "exit_rate": r, "AP": 50.0, "gflops": 1.0} for r in rates]
    # Upper bounds by column (90% quantile of 10 resamples = the largest but one).
    drops = np.tile(np.array([0.0, 0.1, 0.9, 0.2, 0.3]), (10, 1))
    assert choose_point_bootstrap(points, drops, max_ap_drop=0.5)["exit_rate"] == 0.2
    assert choose_point_bootstrap(points, drops, max_ap_drop=1.0)["exit_rate"] == 0.8
    # Nothing passes: route everything (no exits), which loses nothing.
    assert choose_point_bootstrap(points, drops + 5, max_ap_drop=0.5)["exit_rate"] == 0.0
    with pytest.raises(ValueError, match="drops must be"):
        choose_point_bootstrap(points, drops[:, :3])
