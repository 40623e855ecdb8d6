"""Saver selection by ΔC = c_s - r*, with two real savers of different cost."""
import os
import uuid

import pytest
import torch

import tinysaver_det  # noqa: F401
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from tinysaver_det.config import load_config
from tinysaver_det.data.datasets import register_synthetic
from tinysaver_det.data.synthetic import generate_split, split_spec
from tinysaver_det.engine.saver_selection import format_ranking, rank_savers

SYNTHETIC = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "Synthetic")
TINYSAVER = os.path.join(SYNTHETIC, "tinysaver_R18_cascade_R18.yaml")
SAVERS = [os.path.join(SYNTHETIC, "saver_faster_rcnn_R_18_FPN.yaml"), os.path.join(SYNTHETIC, "saver_retinanet_R_18_FPN.yaml")]


def test_rank_savers_orders_by_delta_c(tmp_path):
    root = str(tmp_path / "data")
    generate_split(root, "calib", split_spec("calib", 0.01), num_images=4, progress=False)
    prefix = f"select{uuid.uuid4().hex[:6]}"
    register_synthetic(root, prefix=prefix)
    torch.manual_seed(0)
    paths = {}
    for name, config in [("base", os.path.join(SYNTHETIC, "base_cascade_rcnn_R_18_FPN.yaml"))] + [
        (f"saver{i}", c) for i, c in enumerate(SAVERS)
    ]:
        model = build_model(load_config(config, ["MODEL.DEVICE", "cpu"]))
        DetectionCheckpointer(model, str(tmp_path)).save(name)
        paths[name] = str(tmp_path / f"{name}.pth")
    opts = ["MODEL.DEVICE", "cpu", "MODEL.TINYSAVER.BASE.WEIGHTS", paths["base"], "OUTPUT_DIR", str(tmp_path / "out"),
            "MODEL.TINYSAVER.CALIBRATION.FLOPS_IMAGES", "1", "DATASETS.TEST", f"('{prefix}_calib',)"]
    rows = rank_savers(TINYSAVER, [(SAVERS[0], paths["saver0"]), (SAVERS[1], paths["saver1"])], f"{prefix}_calib", opts)
    assert len(rows) == 2
    assert [r["delta_c"] for r in rows] == sorted(r["delta_c"] for r in rows)
    for r in rows:
        assert r["delta_c"] == pytest.approx(r["c_s"] - r["r_star"])
        assert 0.0 <= r["r_star"] <= 1.0 and 0.0 < r["c_s"] < 1.0
    costs = {r["saver_config"]: r["saver_gflops"] for r in rows}
    assert costs[SAVERS[0]] != costs[SAVERS[1]]  # two savers of different cost
    table = format_ranking(rows)
    assert "ΔC" in table and os.path.basename(SAVERS[0]) in table
