"""The output cache stores real COCO category ids, even when opened before the dataset loads."""

import json
import os
import uuid

import numpy as np
import pytest
import torch

import tinysaver_det  # noqa: F401
from detectron2.data.datasets import register_coco_instances
from detectron2.modeling import build_model
from tinysaver_det.config import load_config
from tinysaver_det.data.checks import checked_dataset_dicts
from tinysaver_det.data.datasets import SHARED_COCO_SETS, default_shared_root
from tinysaver_det.engine.output_cache import OutputCache

FOLDER, JSON, IMAGES = SHARED_COCO_SETS["coco_2017_val_subset158"]
SHARED = os.path.join(default_shared_root(), FOLDER)
SYNTHETIC = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "Synthetic")
pytestmark = pytest.mark.skipif(
    not os.path.isdir(SHARED), reason=f"shared COCO subset absent: {SHARED} (TINYSAVER_SHARED_DATA)"
)


def few_coco_images(folder, n: int) -> str:
    """The first n images of the COCO subset with all 80 categories, registered under a new name."""
    with open(os.path.join(SHARED, JSON)) as f:
        full = json.load(f)
    images = sorted(full["images"], key=lambda im: im["id"])[:n]
    ids = {im["id"] for im in images}
    path = folder / "few.json"
    anns = [a for a in full["annotations"] if a["image_id"] in ids]
    path.write_text(json.dumps({**full, "images": images, "annotations": anns}))
    name = f"cachecoco_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, str(path), os.path.join(SHARED, IMAGES))
    return name


def coco80_cfg(folder):
    """The synthetic RetinaNet saver and Cascade R-CNN base, with COCO's 80 classes."""
    saver, base = folder / "saver.yaml", folder / "base.yaml"
    saver.write_text(
        f'_BASE_: "{os.path.abspath(SYNTHETIC)}/saver_retinanet_R_18_FPN.yaml"\n'
        "MODEL:\n  RETINANET:\n    NUM_CLASSES: 80\n"
    )
    base.write_text(
        f'_BASE_: "{os.path.abspath(SYNTHETIC)}/base_cascade_rcnn_R_18_FPN.yaml"\n'
        "MODEL:\n  ROI_HEADS:\n    NUM_CLASSES: 80\n"
    )
    top = folder / "tinysaver.yaml"
    top.write_text(
        'MODEL:\n  META_ARCHITECTURE: "TinySaverRCNN"\n  TINYSAVER:\n'
        f'    SAVER:\n      CONFIG_FILE: "{saver}"\n'
        f'    BASE:\n      CONFIG_FILE: "{base}"\n'
    )
    return load_config(
        str(top),
        [
            "MODEL.DEVICE",
            "cpu",
            "INPUT.MIN_SIZE_TEST",
            "192",
            "INPUT.MAX_SIZE_TEST",
            "320",
            "MODEL.TINYSAVER.CACHE.DIR",
            str(folder / "cache"),
        ],
    )


def test_cached_detections_carry_the_dataset_category_ids(tmp_path):
    name = few_coco_images(tmp_path, 4)
    cfg = coco80_cfg(tmp_path)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():  # a random RetinaNet's focal prior detects nothing: spread its scores
        model.saver.head.cls_score.bias.normal_(0.0, 2.0)
    cache = OutputCache(cfg, name, views=1, model=model)  # opened before the dataset loads
    records = cache.load_or_build()

    with open(os.path.join(tmp_path, "few.json")) as f:
        # contiguous class i -> coco_ids[i]
        coco_ids = sorted(c["id"] for c in json.load(f)["categories"])
    dicts = checked_dataset_dicts([name])
    seen = 0
    for record, d in zip(records, dicts):
        inputs = cache._test_mapper(dict(d))
        classes = model.run_saver([inputs])[0][0]["instances"].pred_classes.numpy()
        want = np.array([coco_ids[c] for c in classes], dtype=np.int64)
        np.testing.assert_array_equal(record["saver"]["category_ids"], want)
        seen += len(want)
    assert seen > 0  # the check compared real detections
