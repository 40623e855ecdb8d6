"""
The main job end to end, quick variant (the instant-test configs): tools/cache_outputs.py caches
the saver's outputs, then the base's in two processes (launch), tools/train_net.py trains the
evaluator, tools/calibrate.py chooses the threshold, train_net --eval-only evaluates TinySaver and
bench/routing_overhead.py times the three; then a re-run reuses every stage. The saver and base
are the session's trained detectors (tests/conftest.py), placed where the demo's training stages
would write them, so the demo reuses them and the run ends at an operating point with both paths
taken.
"""

import json
import math
import os
import shutil

import pytest
from conftest import QUICK_SCALE, load_tool

from tinysaver_det.config import load_config
from tinysaver_det.data.synthetic import split_spec

Demo = load_tool("demo").Demo


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, trained_detectors):
    out = tmp_path_factory.mktemp("demo")
    for part in ("saver", "base"):
        os.makedirs(out / part)
        shutil.copy(trained_detectors.weights[part], out / part / "model_final.pth")
    summary = Demo(str(out), quick=True, data_root=trained_detectors.root).run()
    return out, summary


def read_json(path):
    with open(path) as f:
        return json.load(f)


def test_quick_demo_reuses_the_trained_detectors(quick_run):
    out, summary = quick_run
    stages = set(summary["stage_times_s"])
    assert "train_saver" not in stages and "train_base" not in stages
    assert {"train_tinysaver", "calibrate", "eval_tinysaver", "speed"} <= stages
    # The instant-test config caches 2 views of the evaluator's images: one stage per views count.
    tinysaver_cfg = load_config(Demo(str(out), quick=True).configs["tinysaver"])
    views = tinysaver_cfg.MODEL.TINYSAVER.CACHE.TRAIN_VIEWS
    assert views > 1
    for part in ("cache_saver", "cache_base"):
        assert {f"{part}_1views", f"{part}_{views}views"} <= stages
    # The saver's half of the evaluator's and the calibration split's caches, built beside the
    # base's training; the marginal_ap target compares both detectors, so the training cache that
    # evaluator training read holds the base too.
    cache = out / "cache"
    for folder in (f"synthetic_evaluator_{views}views", "synthetic_calib_1views"):
        assert (cache / folder / "manifest.json").is_file()
        assert (cache / f"{folder}_base" / "manifest.json").is_file()
    assert not (cache / "synthetic_test_1views").exists()  # the test split: only with the base


def test_quick_demo_ends_at_a_real_operating_point(quick_run):
    out, summary = quick_run
    calibration = read_json(out / "calibration" / "calibration.json")
    chosen = calibration["deployed_point"]
    # On the calibration split: a finite threshold with images on both paths, within the budget.
    assert math.isfinite(chosen["threshold"]) and 0.0 < chosen["exit_rate"] < 1.0
    assert chosen["target_met"] and chosen["gflops"] <= calibration["target"]["gflops_budget"]
    assert calibration["calibration_split"]["base"]["AP"] > 0
    curves = calibration["calibration_split"]["curves"]
    assert set(curves) == {
        "evaluator",
        "confidence",
        "random",
        "oracle",
        "marginal_oracle",
        "difficulty",
    }
    assert calibration["costs"]["c_e"] < 0.01  # the evaluator costs under 1% of the base

    # The evaluation used the calibrated threshold: every image's decision follows from its score.
    routing_file = out / "eval" / "tinysaver" / "inference" / summary["dataset"] / "routing.json"
    images = read_json(routing_file)["images"]
    assert len(images) == split_spec("test", QUICK_SCALE).num_images
    assert all(im["exited"] == (im["score"] >= chosen["threshold"]) for im in images)
    exited = sum(im["exited"] for im in images)
    assert 0 < exited < len(images)

    results = read_json(out / "eval" / "tinysaver" / "inference" / "results.json")
    routing = results[summary["dataset"]]["routing"]
    assert routing["exit_rate"] == exited / len(images)
    # Both paths were taken, so each has its AP.
    assert routing["AP_saver_images"] >= 0 and routing["AP_base_images"] >= 0
    costs = calibration["costs"]
    routed = 1 - exited / len(images)
    expected = costs["saver_gflops"] + costs["evaluator_gflops"] + routed * costs["base_gflops"]
    assert routing["gflops_per_image"] == pytest.approx(expected)


def test_quick_demo_produces_the_final_table(quick_run):
    out, summary = quick_run
    assert [r["model"].split(" ")[0] for r in summary["rows"]] == ["base", "saver", "TinySaver"]
    base, saver, routed = summary["rows"]
    assert summary["dataset"] == "synthetic_test"
    assert base["AP"] > 0  # trained detectors: the table is not a row of zeros
    assert saver["GFLOPs/img"] < routed["GFLOPs/img"] < base["GFLOPs/img"]
    calibration = read_json(out / "calibration" / "calibration.json")
    assert summary["threshold"] == calibration["deployed_point"]["threshold"]
    for row in summary["rows"]:
        assert row["images/s"] > 0
    # Base and saver: the calibration report on their cached test outputs; TinySaver: --eval-only.
    report = calibration["reports"][summary["dataset"]]
    assert base["AP"] == round(report["base"]["AP"], 2)
    assert saver["AP"] == round(report["saver"]["AP"], 2)
    results = read_json(out / "eval" / "tinysaver" / "inference" / "results.json")
    assert routed["AP"] == round(results[summary["dataset"]]["bbox"]["AP"], 2)
    speed = read_json(out / "speed" / "routing_overhead.json")["runs"][0]
    assert speed["batch_size"] == 1
    assert routed["images/s"] == round(1e3 / speed["t_routed_ms"], 2)
    assert base["images/s"] == round(1e3 / speed["t_base_ms"], 2)
    for name in (
        "accuracy_vs_gflops.png",
        "score_distribution.png",
        "examples.png",
        "config_calibrated.yaml",
    ):
        assert os.path.getsize(out / "calibration" / name) > 0
    assert (out / "tinysaver" / "evaluator_rank_correlation.json").is_file()


def test_rerun_reuses_every_stage(quick_run, trained_detectors):
    out, first = quick_run
    again = Demo(str(out), quick=True, data_root=trained_detectors.root).run()
    # Nothing retrained, recalibrated or re-evaluated.
    assert set(again["stage_times_s"]) == {"data_1", "data_2"}
    assert again["rows"] == first["rows"]
