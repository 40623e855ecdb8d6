"""Bootstrap intervals of a routed model's figures, on outputs built from ground truth."""

import numpy as np
import pytest

from tinysaver_det.evaluation.bootstrap import bootstrap_routing
from tinysaver_det.flops import compute_saved
from tinysaver_det.metrics.coco_fast import ImageDets, ImageGT, MatchTable

COSTS = {"saver_gflops": 1.0, "evaluator_gflops": 0.0, "base_gflops": 4.0, "c_s": 0.25, "c_e": 0.0}


def split(n=40, seed=0):
    """Each image: 3 boxes. The base finds them exactly; the saver exactly on even images and
    shifted off every box on odd ones."""
    rng = np.random.default_rng(seed)
    gts, saver, base = [], [], []
    for i in range(n):
        xy = rng.uniform(0, 200, (3, 2))
        boxes = np.concatenate([xy, rng.uniform(20, 60, (3, 2))], axis=1)
        gts.append(ImageGT(boxes=boxes, category_ids=[1, 1, 2]))
        scores = np.array([0.9, 0.8, 0.7])
        base.append(ImageDets(boxes=boxes, scores=scores, category_ids=np.array([1, 1, 2])))
        moved = boxes + (np.array([80.0, 80.0, 0, 0]) if i % 2 else 0.0)
        saver.append(ImageDets(boxes=moved, scores=scores, category_ids=np.array([1, 1, 2])))
    return gts, saver, base


def routing_figures(table: MatchTable, exited: np.ndarray, costs) -> dict:
    """The figures of the whole split by full MatchTable evaluations: what resamples vary around."""
    saver, base = table.sources.index("saver"), table.sources.index("base")
    routed = table.coco_metrics(np.where(exited, saver, base))["AP"]
    ap_base = table.source_metrics("base")["AP"]
    exit_rate = float(np.mean(exited)) if len(exited) else 0.0
    return {
        "AP_base": ap_base,
        "AP_saver": table.source_metrics("saver")["AP"],
        "AP_routed": routed,
        "AP_drop": ap_base - routed,
        "exit_rate": exit_rate,
        "compute_saved": compute_saved(costs, exit_rate),
    }


def test_exits_where_the_saver_is_exact_lose_nothing_in_every_resample():
    gts, saver, base = split()
    exited = np.arange(len(gts)) % 2 == 0
    iv = bootstrap_routing(gts, saver, base, exited, COSTS, samples=50)
    assert iv["AP_base"] == (100.0, 100.0) and iv["AP_routed"] == (100.0, 100.0)
    assert iv["AP_drop"] == (0.0, 0.0)
    lo, hi = iv["exit_rate"]
    assert 0.3 < lo < 0.5 < hi < 0.7  # half the images exit, and resamples vary that share
    # compute saved = 1 - (c_s + c_e + 1 - r) = r - 0.25, monotone in r.
    assert iv["compute_saved"] == pytest.approx((lo - 0.25, hi - 0.25))


def test_exits_where_the_saver_is_wrong_cost_ap_and_the_interval_brackets_the_point():
    gts, saver, base = split()
    exited = np.arange(len(gts)) % 2 == 1
    point = routing_figures(MatchTable.build(gts, {"saver": saver, "base": base}), exited, COSTS)
    assert point["AP_drop"] > 20
    iv = bootstrap_routing(gts, saver, base, exited, COSTS, samples=100, seed=1)
    lo, hi = iv["AP_drop"]
    assert 0 < lo < point["AP_drop"] < hi
    lo, hi = iv["AP_saver"]
    assert lo < point["AP_saver"] < hi < 100
    # A fixed seed gives the same intervals; a narrower level gives a narrower one.
    assert bootstrap_routing(gts, saver, base, exited, COSTS, samples=100, seed=1) == iv
    narrow = bootstrap_routing(gts, saver, base, exited, COSTS, samples=100, seed=1, level=0.5)
    assert iv["AP_drop"][0] <= narrow["AP_drop"][0] <= narrow["AP_drop"][1] <= iv["AP_drop"][1]


def test_bad_sample_count_is_refused():
    gts, saver, base = split(4)
    with pytest.raises(ValueError, match="samples"):
        bootstrap_routing(gts, saver, base, np.ones(4, bool), COSTS, samples=0)


def test_resamples_shared_by_processes_give_the_serial_results():
    from tinysaver_det.evaluation.bootstrap import bootstrap_ap_drops, bootstrap_routers

    gts, saver, base = split(n=30, seed=3)
    rng = np.random.default_rng(0)
    exits = {"a": rng.random(30) < 0.5, "b": np.arange(30) % 2 == 0}
    serial = bootstrap_routers(gts, saver, base, exits, COSTS, samples=12, seed=2)
    assert bootstrap_routers(gts, saver, base, exits, COSTS, samples=12, seed=2, workers=2) == (
        serial
    )
    scores = {"a": rng.random(30), "b": -np.arange(30.0)}
    thresholds = {"a": [0.2, 0.5, 0.8], "b": [-20.0, -5.0]}
    one = bootstrap_ap_drops(gts, saver, base, scores, thresholds, samples=9, seed=1)
    two = bootstrap_ap_drops(gts, saver, base, scores, thresholds, samples=9, seed=1, workers=3)
    assert one.keys() == two.keys()
    for r in one:
        assert one[r].shape == (9, len(thresholds[r]))
        np.testing.assert_array_equal(one[r], two[r])
    # The drops vary between resamples (else equal results would prove nothing).
    assert np.ptp(one["b"], axis=0).max() > 0
