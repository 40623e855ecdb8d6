"""
The main job end to end, quick variant: tools/train_net.py trains saver, base and evaluator,
tools/calibrate.py chooses the threshold, train_net --eval-only evaluates all three; then a re-run
reuses every stage. Real detectors on a few generated images, a few iterations each.
"""
import json
import math
import os

import pytest

from tinysaver_det.engine.demo import Demo


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    summary = Demo(str(out), quick=True).run()
    return out, summary


def test_quick_demo_produces_the_final_table(quick_run):
    out, summary = quick_run
    assert [r["model"].split(" ")[0] for r in summary["rows"]] == ["base", "saver", "TinySaver"]
    for row in summary["rows"]:
        assert 0.0 <= row["AP"] <= 100.0 and 0.0 <= row["AP50"] <= 100.0
        assert row["GFLOPs/img"] > 0 and row["images/s"] > 0
    base, saver, routed = summary["rows"]
    assert saver["GFLOPs/img"] < base["GFLOPs/img"]
    assert summary["dataset"] == "synthetic_val"
    for name in ("accuracy_vs_gflops.png", "score_distribution.png", "examples.png", "calibration.json",
                 "config_calibrated.yaml"):
        assert os.path.getsize(out / "calibration" / name) > 0
    calibration = json.loads((out / "calibration" / "calibration.json").read_text())
    assert set(calibration["calibration"]["curves"]) == {"evaluator", "confidence", "random", "oracle"}
    assert calibration["costs"]["c_e"] < 0.01  # the evaluator costs under 1% of the base
    results = json.loads((out / "eval" / "tinysaver" / "inference" / "results.json").read_text())
    routing = results["synthetic_val"]["routing"]
    assert 0.0 <= routing["exit_rate"] <= 1.0
    assert math.isclose(routing["exit_rate"], float(routed["exit rate"].rstrip("%")) / 100, abs_tol=1e-3)
    assert (out / "tinysaver" / "evaluator_rank_correlation.json").is_file()


def test_rerun_reuses_every_stage(quick_run):
    out, first = quick_run
    again = Demo(str(out), quick=True).run()
    assert set(again["stage_times_s"]) == {"data"}  # nothing retrained, recalibrated or re-evaluated
    assert again["rows"] == first["rows"]
