"""The calibrated config that calibrate writes is the deployable one, from any working directory."""

import os
import shutil
from pathlib import Path

import torch

import tinysaver_det  # noqa: F401  (registers the meta-architecture, heads and datasets)
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from tinysaver_det.calibration_result import CalibrationResult
from tinysaver_det.config import load_config
from tinysaver_det.engine.calibrate import write_calibrated_config
from tinysaver_det.engine.trainer import load_weights

REPO = Path(__file__).resolve().parents[2]
RECORD = "the calibration run's own record\n"


def images(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.randint(0, 256, (3, 150 + 20 * i, 170), dtype=torch.uint8, generator=g),
            "height": 150 + 20 * i,
            "width": 170,
        }
        for i in range(n)
    ]


def test_calibrated_config_loads_and_evaluates_from_another_directory(tmp_path, monkeypatch):
    # As in the README: the repository's configs and weights named relative to the working
    # directory, calibration into out/cal; then the written config is deployed from elsewhere.
    work = tmp_path / "work"
    shutil.copytree(REPO / "configs", work / "configs")
    monkeypatch.chdir(work)
    weights = [
        "MODEL.TINYSAVER.SAVER.WEIGHTS",
        "weights/saver.pth",
        "MODEL.TINYSAVER.BASE.WEIGHTS",
        "weights/base.pth",
        "MODEL.WEIGHTS",
        "weights/model.pth",
    ]
    cfg = load_config(
        "configs/Synthetic/tinysaver_R18_cascade_R18.yaml",
        ["MODEL.DEVICE", "cpu", "OUTPUT_DIR", "out/cal"] + weights,
    )
    torch.manual_seed(0)
    trained = build_model(cfg).eval()
    with torch.no_grad():
        trained.evaluator.mlp[-1].bias.fill_(0.3)  # a trained evaluator differs from a fresh one
    os.makedirs("weights")
    for name, module in (("saver", trained.saver), ("base", trained.base), ("model", trained)):
        DetectionCheckpointer(module, "weights").save(name)
    cal = work / "out" / "cal"
    cal.mkdir(parents=True)
    (cal / "config.yaml").write_text(RECORD)
    CalibrationResult(router="evaluator", deployed_point={"threshold": 0.1234}).save(
        str(cal / "calibration.json")
    )
    write_calibrated_config(cfg, "out/cal/calibration.json", "out/cal/config_calibrated.yaml")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    deployed = load_config("../work/out/cal/config_calibrated.yaml")
    torch.manual_seed(1)
    model = build_model(deployed)
    load_weights(model, deployed)
    model.eval()
    assert deployed.MODEL.TINYSAVER.THRESHOLD == model.threshold == 0.1234
    # Its runs write elsewhere than the calibration run that wrote it.
    assert os.path.realpath(deployed.OUTPUT_DIR) != os.path.realpath(cal)
    for key, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    # The same routing as the trained model at the calibrated threshold (at its config's own
    # threshold an image scoring between the two would take the other detector).
    trained.threshold = model.threshold
    with torch.no_grad():
        expected, outputs = trained(images()), model(images())
    assert len(outputs) == 2
    for got, want in zip(outputs, expected):
        assert torch.equal(got["instances"].pred_boxes.tensor, want["instances"].pred_boxes.tensor)
        assert got["tinysaver"]["score"] == want["tinysaver"]["score"]
    assert (cal / "config.yaml").read_text() == RECORD
