"""tinysaver_det.config: paths made absolute, where THRESHOLD comes from, values refused by name."""

import logging
import math
import os
import re
from pathlib import Path

import pytest

import tinysaver_det  # noqa: F401  (registers the meta-architecture, heads and datasets)
from detectron2.modeling import build_model
from tinysaver_det.calibration_result import CalibrationResult
from tinysaver_det.config import PATH_KEYS, load_config
from tinysaver_det.engine.output_cache import cache_dir_for

REPO = Path(__file__).resolve().parents[1]
TINYSAVER_YAML = REPO / "configs" / "Synthetic" / "tinysaver_R18_cascade_R18.yaml"
THRESHOLD = "MODEL.TINYSAVER.THRESHOLD"
CALIBRATION_FILE = "MODEL.TINYSAVER.CALIBRATION_FILE"
CPU = ["MODEL.DEVICE", "cpu"]


def write_calibration(path: Path, threshold: float) -> str:
    CalibrationResult(router="evaluator", deployed_point={"threshold": threshold}).save(str(path))
    return str(path)


def value_of(cfg, key: str):
    for name in key.split("."):
        cfg = cfg[name]
    return cfg


@pytest.mark.parametrize(
    "text, value",
    [
        ("-inf", -math.inf),
        ("inf", math.inf),
        ("+inf", math.inf),
        ("-Infinity", -math.inf),
        ("0.25", 0.25),
    ],
)
def test_infinite_thresholds_are_accepted_on_the_command_line(text, value):
    # yacs reads "inf" as a string and refused it as a type mismatch for the float key.
    cfg = load_config(str(TINYSAVER_YAML), CPU + [THRESHOLD, text])
    assert cfg.MODEL.TINYSAVER.THRESHOLD == value


def test_inf_is_not_forced_into_a_string_key():
    cfg = load_config(str(TINYSAVER_YAML), CPU + ["MODEL.TINYSAVER.ROUTER", "inf"])
    assert cfg.MODEL.TINYSAVER.ROUTER == "inf"  # a string key keeps its string (refused when used)


def test_calibration_file_threshold_is_resolved_into_the_config(tmp_path, caplog):
    calibration = write_calibration(tmp_path / "calibration.json", 0.7)
    with caplog.at_level(logging.INFO, logger="tinysaver_det"):
        cfg = load_config(str(TINYSAVER_YAML), CPU + [CALIBRATION_FILE, calibration])
    assert cfg.MODEL.TINYSAVER.THRESHOLD == 0.7
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("0.7" in m and calibration in m for m in infos), infos


def test_an_explicit_threshold_wins_over_the_calibration_file_and_the_model(tmp_path, caplog):
    calibration = write_calibration(tmp_path / "calibration.json", math.inf)
    opts = CPU + [CALIBRATION_FILE, calibration, THRESHOLD, "0.0"]
    with caplog.at_level(logging.INFO, logger="tinysaver_det"):
        cfg = load_config(str(TINYSAVER_YAML), opts)
    assert cfg.MODEL.TINYSAVER.THRESHOLD == 0.0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("wins over" in m and "inf" in m for m in warnings), warnings
    # The model reads its threshold from the config alone: the file is not read again at build.
    os.remove(calibration)
    assert build_model(cfg).threshold == 0.0


def test_a_threshold_in_the_file_does_not_win_over_the_calibration_file(tmp_path):
    calibration = write_calibration(tmp_path / "calibration.json", -math.inf)
    config = tmp_path / "deployed.yaml"
    config.write_text(
        f'_BASE_: "{TINYSAVER_YAML}"\nMODEL:\n  TINYSAVER:\n    THRESHOLD: 0.9\n'
        f'    CALIBRATION_FILE: "{calibration}"\n'
    )
    assert load_config(str(config), CPU).MODEL.TINYSAVER.THRESHOLD == -math.inf


def test_a_broken_calibration_file_fails_at_load_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="CALIBRATION_FILE.*missing.json"):
        load_config(str(TINYSAVER_YAML), CPU + [CALIBRATION_FILE, str(tmp_path / "missing.json")])


def test_flops_images_zero_is_refused_by_name():
    # 0 images measured made every GFLOPs figure NaN without an error.
    key = "MODEL.TINYSAVER.CALIBRATION.FLOPS_IMAGES"
    for bad in ("0", "-3"):
        with pytest.raises(ValueError, match=re.escape(key) + ".*" + bad):
            load_config(str(TINYSAVER_YAML), CPU + [key, bad])


def test_every_path_is_absolute_after_loading(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    opts = CPU + [
        "OUTPUT_DIR",
        "out/run",
        "MODEL.WEIGHTS",
        "w/model.pth",
        "MODEL.TINYSAVER.CACHE.DIR",
        "c",
        "MODEL.TINYSAVER.SAVER.WEIGHTS",
        "w/saver.pth",
        "MODEL.TINYSAVER.BASE.WEIGHTS",
        "detectron2://Misc/model_final.pkl",  # a URL stays a URL
        CALIBRATION_FILE,
        write_calibration(Path("calibration.json"), 0.5),
    ]
    cfg = load_config(os.path.relpath(TINYSAVER_YAML, tmp_path), opts)
    for key in PATH_KEYS:
        value = value_of(cfg, key)
        assert os.path.isabs(value) or value.startswith("detectron2://"), (key, value)
    assert cfg.OUTPUT_DIR == str(tmp_path / "out" / "run")
    assert cfg.MODEL.TINYSAVER.SAVER.WEIGHTS == str(tmp_path / "w" / "saver.pth")
    assert cfg.MODEL.TINYSAVER.BASE.WEIGHTS == "detectron2://Misc/model_final.pkl"
    saver_yaml = TINYSAVER_YAML.parent / "saver_cascade_rcnn_R_18_FPN.yaml"
    assert cfg.MODEL.TINYSAVER.SAVER.CONFIG_FILE == str(saver_yaml)


def test_runs_in_one_output_folder_share_the_default_cache(tmp_path, monkeypatch):
    # The README's evaluator training and calibration runs (output/coco/tinysaver and
    # output/coco/calibration) build the calibration split's cache once, not once per OUTPUT_DIR.
    monkeypatch.delenv("TINYSAVER_CACHE", raising=False)
    train, calib = (
        load_config(str(TINYSAVER_YAML), CPU + ["OUTPUT_DIR", str(out)])
        for out in (tmp_path / "coco" / "tinysaver", tmp_path / "coco" / "calibration")
    )

    def folder(cfg):
        return os.path.dirname(cache_dir_for(cfg, "synthetic_calib", 1, True))

    assert folder(train) == folder(calib) == str(tmp_path / "coco" / "cache")
    # TINYSAVER_CACHE moves the default; an explicit CACHE.DIR wins over both.
    monkeypatch.setenv("TINYSAVER_CACHE", str(tmp_path / "everything"))
    assert folder(train) == str(tmp_path / "everything")
    train.MODEL.TINYSAVER.CACHE.DIR = str(tmp_path / "mine")
    assert folder(train) == str(tmp_path / "mine")


@pytest.mark.parametrize("key,value", [("BOOTSTRAP_WORKERS", -1), ("FLOPS_IMAGES", 0)])
def test_calibration_counts_out_of_range_are_refused_with_their_key(key, value):
    with pytest.raises(ValueError, match=f"MODEL.TINYSAVER.CALIBRATION.{key} must be"):
        load_config(str(TINYSAVER_YAML), [f"MODEL.TINYSAVER.CALIBRATION.{key}", str(value)])
