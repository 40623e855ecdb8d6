"""
The BCCD track end to end, quick variant: real microscope images from the shared data folder,
registered from the configs (no Python), the first images of each split; saver and base trained
for a few iterations, the evaluator, calibration on val, evaluation on test, one table with
bootstrap intervals. Skipped where the shared BCCD folder is absent.
"""

import json
import math
import os

import pytest
from conftest import load_tool

from tinysaver_det.data.datasets import default_shared_root

demo = load_tool("demo")
Demo, QUICK_IMAGES = demo.Demo, demo.QUICK_IMAGES

BCCD = os.path.join(default_shared_root(), "bccd")
pytestmark = pytest.mark.skipif(
    not os.path.isdir(BCCD), reason=f"shared BCCD folder {BCCD} is absent"
)


@pytest.fixture(scope="module")
def quick_bccd(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_bccd")
    return out, Demo(str(out), quick=True, track="bccd").run()


def read_json(path):
    with open(path) as f:
        return json.load(f)


def test_the_quick_splits_are_the_first_images_of_each_bccd_split(quick_bccd):
    out, _ = quick_bccd
    for split in ("train", "val", "test"):
        full = read_json(os.path.join(BCCD, "annotations", f"instances_{split}.json"))
        quick = read_json(out / "datasets" / "bccd_quick" / f"instances_{split}.json")
        first = sorted(im["id"] for im in full["images"])[:QUICK_IMAGES]
        assert [im["id"] for im in quick["images"]] == first
        kept = sum(a["image_id"] in first for a in full["annotations"])
        assert len(quick["annotations"]) == kept > 0


def test_every_stage_ran_on_the_registered_splits(quick_bccd):
    out, summary = quick_bccd
    stages = {
        "train_saver",
        "train_base",
        "cache_saver_1views",  # the saver's half of the calibration split's cache
        "cache_saver_2views",  # the evaluator's training cache (saver_ap: the saver alone)
        "cache_base",
        "train_tinysaver",
        "calibrate",
        "eval_tinysaver",
        "speed",
    }
    assert stages <= set(summary["stage_times_s"])
    assert summary["dataset"] == "bccd_quick_test"
    calibration = read_json(out / "calibration" / "calibration.json")
    assert calibration["calibration_dataset"] == "bccd_quick_val"
    # Base and saver on the test images (the calibration report on their cached outputs), and the
    # deployed TinySaver evaluated on the same images.
    assert list(calibration["reports"]) == ["bccd_quick_test"]
    results = read_json(out / "eval" / "tinysaver" / "inference" / "results.json")
    assert list(results) == ["bccd_quick_test"]
    routing = read_json(
        out / "eval" / "tinysaver" / "inference" / "bccd_quick_test" / "routing.json"
    )
    images = routing["images"]
    assert len(images) == QUICK_IMAGES
    threshold = calibration["deployed_point"]["threshold"]
    assert all(
        im["exited"] == (math.isfinite(im["score"]) and im["score"] >= threshold) for im in images
    )
    for plot in ("accuracy_vs_gflops.png", "score_distribution.png", "examples.png"):
        assert os.path.getsize(out / "calibration" / plot) > 1000


def test_the_table_names_the_detectors_and_carries_intervals(quick_bccd):
    _, summary = quick_bccd
    labels = [row["model"] for row in summary["rows"]]
    assert labels[0] == "base (Cascade R-CNN R-18, 96 px)"
    assert labels[1] == "saver (Faster R-CNN RegNet, 96 px)"
    intervals = summary["intervals"]
    assert set(intervals) == {
        "AP_base",
        "AP_saver",
        "AP_routed",
        "AP_drop",
        "exit_rate",
        "compute_saved",
    }
    for lo, hi in intervals.values():
        assert lo <= hi
    assert "95% bootstrap intervals" in summary["table"]
    # The saver's compute saving is 1 - c_s whatever the images: a degenerate interval of its own.
    saver_row = summary["rows"][1]
    assert saver_row["exit rate"] == "100.0%"
