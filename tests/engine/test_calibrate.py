"""Calibration says loudly when its figures mean nothing: a base of 0 AP, a NaN correlation."""

import logging
import math
import os
import uuid
import warnings

import numpy as np
import pytest
import torch
from conftest import UNTRAINED_ON_CPU

import tinysaver_det  # noqa: F401
from detectron2.modeling import build_model
from tinysaver_det.config import load_config
from tinysaver_det.data.datasets import register_synthetic
from tinysaver_det.data.synthetic import generate_split, split_spec
from tinysaver_det.engine.calibrate import calibrate
from tinysaver_det.evaluation.calibration import check_base_ap, rank_correlation

CONFIG = os.path.join(
    os.path.dirname(__file__), "..", "..", "configs", "Synthetic", "tinysaver_R18_cascade_R18.yaml"
)


@pytest.fixture
def caplog_all(caplog):
    caplog.set_level(logging.WARNING)
    # The package logger may not propagate once detectron2's setup_logger has run in this process.
    logger = logging.getLogger("tinysaver_det")
    old, logger.propagate = logger.propagate, True
    yield caplog
    logger.propagate = old


def test_base_of_zero_or_undefined_ap_is_flagged(caplog_all):
    assert check_base_ap(31.5, "d")
    assert not check_base_ap(0.0, "calib_set") and not check_base_ap(float("nan"), "calib_set")
    assert (
        sum(
            "MODEL.TINYSAVER.BASE.WEIGHTS" in r.message and "calib_set" in r.message
            for r in caplog_all.records
        )
        == 2
    )


def test_constant_quality_gives_nan_with_a_warning_not_scipys(caplog_all):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's ConstantInputWarning would raise here
        assert math.isnan(rank_correlation([0.1, 0.5, 0.9], [0.0, 0.0, 0.0], "split, evaluator"))
        assert math.isnan(rank_correlation([0.3, 0.3, 0.3], [0.2, 0.5, 0.1], "split, confidence"))
    messages = [r.message for r in caplog_all.records]
    assert any(
        "true per-image quality is the same" in m and "split, evaluator" in m for m in messages
    )
    assert any("score is the same" in m and "split, confidence" in m for m in messages)
    assert rank_correlation([1, 2, 3, 4], [10, 20, 40, 30], "ok") == pytest.approx(0.8)


def test_calibration_against_a_blind_base_warns(tmp_path, caplog_all):
    root = str(tmp_path / "data")
    generate_split(root, "calib", split_spec("calib", scale=0.01), num_images=4, progress=False)
    prefix = f"calibwarn{uuid.uuid4().hex[:6]}"
    register_synthetic(root, prefix=prefix)
    cfg = load_config(
        CONFIG,
        [
            *UNTRAINED_ON_CPU,
            "OUTPUT_DIR",
            str(tmp_path / "out"),
            "MODEL.TINYSAVER.CALIBRATION.FLOPS_IMAGES",
            "1",
            "DATASETS.TEST",
            f"('{prefix}_calib',)",
        ],
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():  # broken weights: neither detector finds anything
        for detector in (model.saver, model.base):
            for predictor in detector.roi_heads.box_predictor:
                predictor.cls_score.bias[:-1] = -30.0
    result = calibrate(cfg, model, dataset=f"{prefix}_calib", output_dir=str(tmp_path / "out"))
    assert result.calibration_split["base"]["AP"] == 0.0  # no detections: 0, not NaN
    assert math.isnan(result.calibration_split["rank_correlation"]["evaluator"])
    messages = [r.message for r in caplog_all.records]
    assert any("The base scores 0.00 AP" in m for m in messages)
    assert any("true per-image quality is the same" in m for m in messages)
    assert np.isfinite(result.deployed_point["compute_saved"])
