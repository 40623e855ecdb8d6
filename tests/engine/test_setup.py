"""engine/setup.py: a run that cannot start writes nothing; the threshold's source is logged."""

from pathlib import Path

import pytest

import tinysaver_det  # noqa: F401  (registers the meta-architecture, heads and datasets)
from detectron2.engine import default_argument_parser
from tinysaver_det.calibration_result import CalibrationResult
from tinysaver_det.engine.setup import setup_cfg

REPO = Path(__file__).resolve().parents[2]
TINYSAVER_YAML = REPO / "configs" / "Synthetic" / "tinysaver_R18_cascade_R18.yaml"


def args_for(config_file, *opts):
    return default_argument_parser().parse_args(
        ["--config-file", str(config_file), "--eval-only", "MODEL.DEVICE", "cpu", *map(str, opts)]
    )


def test_a_config_with_a_missing_sub_config_overwrites_no_record(tmp_path):
    out = tmp_path / "cal"
    out.mkdir()
    (out / "config.yaml").write_text("the calibration run's own record\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        f'_BASE_: "{TINYSAVER_YAML}"\nMODEL:\n  TINYSAVER:\n    SAVER:\n'
        '      CONFIG_FILE: "no_such_saver.yaml"\n'
    )
    key = r"MODEL\.TINYSAVER\.SAVER\.CONFIG_FILE"
    with pytest.raises(FileNotFoundError, match=key + ".*no_such_saver"):
        setup_cfg(args_for(broken, "OUTPUT_DIR", out))
    assert (out / "config.yaml").read_text() == "the calibration run's own record\n"


def test_where_the_threshold_comes_from_is_in_the_run_log(tmp_path):
    calibration = tmp_path / "calibration.json"
    CalibrationResult("evaluator", {"threshold": 0.625}).save(str(calibration))
    out = tmp_path / "run"
    cfg = setup_cfg(
        args_for(
            TINYSAVER_YAML,
            "OUTPUT_DIR",
            out,
            "MODEL.TINYSAVER.CALIBRATION_FILE",
            calibration,
            "MODEL.TINYSAVER.THRESHOLD",
            "-inf",
        )
    )
    assert cfg.MODEL.TINYSAVER.THRESHOLD == float("-inf")
    log = (out / "log.txt").read_text()
    assert "WARNING" in log
    assert "-inf given on the command line wins over the threshold 0.625" in log
