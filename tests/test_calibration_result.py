"""calibration.json: CalibrationResult writes it and reads it back, and reads the older format."""

import json
import math

import pytest

from tinysaver_det.calibration_result import FORMAT, CalibrationResult
from tinysaver_det.config import read_calibrated_threshold

POINT = {"threshold": 0.25, "exit_rate": 0.5, "AP": 40.0, "gflops": 1.0, "compute_saved": 0.3}


def full_result() -> CalibrationResult:
    other = {**POINT, "threshold": 0.9}
    return CalibrationResult(
        router="confidence",
        deployed_point=POINT,
        target={"max_ap_drop": 0.5, "gflops_budget": 0.0, "ucb_level": 0.9},
        calibration_dataset="calib",
        costs={"saver_gflops": 0.4, "base_gflops": 1.3},
        calibration_split={
            "base": {"AP": 41.0},
            "chosen_by_router": {"confidence": POINT, "evaluator": other},
        },
        reports={"test": {"intervals": {"AP": [1.0, 2.0]}}},
    )


def test_save_and_load_round_trip(tmp_path):
    path = str(tmp_path / "calibration.json")
    full_result().save(path)
    with open(path) as f:
        assert json.load(f)["format"] == FORMAT
    loaded = CalibrationResult.load(path)
    assert loaded == full_result()
    assert loaded.threshold == 0.25 and read_calibrated_threshold(path) == 0.25


def test_an_infinite_threshold_survives_the_file(tmp_path):
    path = str(tmp_path / "calibration.json")
    CalibrationResult("evaluator", {"threshold": math.inf}).save(path)
    assert read_calibrated_threshold(path) == math.inf


def test_files_of_the_first_format_are_read_in_todays_names(tmp_path):
    # What tools/calibrate.py wrote before the format had a number: "chosen" twice over.
    old = full_result()
    raw = {
        "chosen": old.deployed_point,
        "router": old.router,
        "target": old.target,
        "calibration_dataset": old.calibration_dataset,
        "costs": old.costs,
        "calibration": {"base": {"AP": 41.0}, "chosen": old.calibration_split["chosen_by_router"]},
        "reports": old.reports,
    }
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(raw))
    assert CalibrationResult.load(str(path)) == old


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        json.dumps({"format": FORMAT, "router": "evaluator"}),  # no deployed point
        json.dumps({"format": FORMAT, "router": "evaluator", "deployed_point": {"AP": 1.0}}),
        json.dumps({"format": FORMAT + 1, "router": "evaluator", "deployed_point": POINT}),
        json.dumps({"format": FORMAT, "router": "evaluator", "deployed_point": POINT, "extra": 1}),
        json.dumps({"calibration": {}}),  # the first format without its "chosen"
        json.dumps([1, 2]),
    ],
)
def test_unreadable_files_are_refused_naming_the_file(tmp_path, content):
    path = tmp_path / "my_calibration.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="my_calibration.json"):
        CalibrationResult.load(str(path))
