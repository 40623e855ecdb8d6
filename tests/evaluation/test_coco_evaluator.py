"""
One ground truth: COCO evaluation, the caches, calibration and the routing evaluator score against
the boxes the input checks keep (a degenerate box dropped, an overhanging one clipped), on the
dataset's own images.
"""

import json
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, Instances
from tinysaver_det.data.checks import checked_dataset_dicts
from tinysaver_det.data.datasets import register_halves
from tinysaver_det.evaluation.calibration import METRICS
from tinysaver_det.evaluation.coco_evaluator import CheckedCOCOEvaluator
from tinysaver_det.evaluation.detections import (
    contiguous_to_dataset_id,
    detections_record,
    record_dets,
)
from tinysaver_det.evaluation.ground_truth import dataset_ground_truth
from tinysaver_det.metrics.coco_fast import MatchTable

CATEGORY_IDS = [2, 5, 11]
H, W = 160, 200
DEGENERATE = 1000  # annotation ids of the planted bad boxes
OVERHANGING = 1001


def make_json(path, num_images=8, seed=0, bad=True) -> dict:
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(num_images):
        images.append({"id": 10 + i, "file_name": f"{i}.jpg", "height": H, "width": W})
        for _ in range(rng.integers(2, 5)):
            w, h = rng.uniform(34, 80, 2)  # none small: APs is undefined
            x, y = rng.uniform(0, W - w), rng.uniform(0, H - h)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": 10 + i,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                    "category_id": int(rng.choice(CATEGORY_IDS)),
                }
            )
    if bad:
        anns.append(
            {
                "id": DEGENERATE,
                "image_id": 11,
                "bbox": [50.0, 40.0, 0.0, 30.0],
                "area": 0.0,
                "iscrowd": 0,
                "category_id": 5,
            }
        )
        anns.append(
            {
                "id": OVERHANGING,
                "image_id": 12,
                "bbox": [150.0, 100.0, 80.0, 40.0],
                "area": 3200.0,
                "iscrowd": 0,
                "category_id": 2,
            }
        )
    for im in images:  # the input checks read every image
        Image.new("RGB", (W, H)).save(path.parent / im["file_name"])
    coco = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": c, "name": f"c{c}"} for c in CATEGORY_IDS],
    }
    path.write_text(json.dumps(coco))
    return coco


def register(path) -> str:
    name = f"checkedgt_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, str(path), str(path.parent))
    return name


def cleaned_by_hand(coco: dict) -> dict:
    """The json as the checks see it: the degenerate box removed, the overhanging one clipped."""
    anns = []
    for a in coco["annotations"]:
        if a["id"] == DEGENERATE:
            continue
        if a["id"] == OVERHANGING:
            a = {**a, "bbox": [150.0, 100.0, 50.0, 40.0]}
        anns.append(a)
    return {**coco, "annotations": anns}


def predictions(name, wrong=True, empty=False):
    """Detections from the checked boxes; some shifted, so the AP is neither 0 nor 100."""
    rng = np.random.default_rng(1)
    out = []
    for i, d in enumerate(checked_dataset_dicts([name])):
        boxes = torch.tensor([a["bbox"] for a in d["annotations"]], dtype=torch.float32)
        boxes = boxes.reshape(-1, 4)
        if wrong and i % 2:
            boxes[::2] += 9.0
        inst = Instances((d["height"], d["width"]))
        keep = slice(0, 0) if empty else slice(None)
        inst.pred_boxes = Boxes(boxes[keep])
        inst.scores = torch.from_numpy(rng.uniform(0.1, 1, len(boxes)).astype(np.float32))[keep]
        inst.pred_classes = torch.tensor(
            [a["category_id"] for a in d["annotations"]], dtype=torch.int64
        )[keep]
        out.append(({"image_id": d["image_id"]}, {"instances": inst}))
    return out


def checked(name, folder):
    return CheckedCOCOEvaluator(name, tasks=("bbox",), distributed=False, output_dir=str(folder))


def plain(name, folder):
    return COCOEvaluator(name, tasks=("bbox",), distributed=False, output_dir=str(folder))


def evaluate(evaluator, preds):
    evaluator.reset()
    for x, y in preds:
        evaluator.process([x], [y])
    return evaluator.evaluate()["bbox"]


def test_coco_ap_scores_the_checked_boxes(tmp_path):
    coco = make_json(tmp_path / "bad.json")
    name = register(tmp_path / "bad.json")
    (tmp_path / "clean.json").write_text(json.dumps(cleaned_by_hand(coco)))
    clean = register(tmp_path / "clean.json")
    preds = predictions(name)
    got = evaluate(checked(name, tmp_path / "a"), preds)
    want = evaluate(plain(clean, tmp_path / "b"), predictions(clean))
    raw = evaluate(plain(name, tmp_path / "c"), predictions(name))
    assert 5.0 < want["AP"] < 95.0
    for k in METRICS:
        assert got[k] == pytest.approx(want[k], abs=1e-6, nan_ok=True), k
    assert raw["AP"] < want["AP"] - 1.0  # the raw json still counts the dropped box as missed


def test_caches_and_calibration_score_the_same_boxes(tmp_path):
    coco = make_json(tmp_path / "bad.json")
    name = register(tmp_path / "bad.json")
    dicts = checked_dataset_dicts([name])
    gts = dataset_ground_truth(name, dicts)
    clean = cleaned_by_hand(coco)
    assert sum(len(g.boxes) for g in gts) == len(clean["annotations"])
    assert sum(len(d["annotations"]) for d in dicts) == len(clean["annotations"])  # training's
    overhanging = gts[2]
    assert [150.0, 100.0, 50.0, 40.0] in overhanging.boxes.tolist()
    # AP of the same detections from the per-image ground truth equals COCO evaluation's.
    to_id = contiguous_to_dataset_id(name)
    dets = []
    for _, y in predictions(name):
        dets.append(record_dets(detections_record(y["instances"], to_id)))
    fast = MatchTable.build(gts, {"p": dets}).source_metrics("p")
    want = evaluate(checked(name, tmp_path / "a"), predictions(name))
    assert fast["AP"] == pytest.approx(want["AP"], abs=1e-6)


def test_a_half_of_a_json_is_scored_on_its_own_images(tmp_path):
    make_json(tmp_path / "full.json", bad=False)
    prefix = f"halves_{uuid.uuid4().hex[:8]}"
    calib, _ = register_halves(prefix, str(tmp_path / "full.json"), str(tmp_path))
    perfect = predictions(calib, wrong=False)
    assert len(perfect) == len(DatasetCatalog.get(calib)) == 4
    got = evaluate(checked(calib, tmp_path / "a"), perfect)
    raw = evaluate(plain(calib, tmp_path / "b"), predictions(calib, wrong=False))
    assert got["AP"] == pytest.approx(100.0)
    assert raw["AP"] < 80.0  # detectron2's counts the other half's boxes as missed


def test_no_detections_score_zero_not_nan(tmp_path):
    make_json(tmp_path / "full.json", bad=False)
    name = register(tmp_path / "full.json")
    got = evaluate(checked(name, tmp_path / "a"), predictions(name, empty=True))
    assert got["AP"] == 0.0 and got["AP50"] == 0.0 and got["APm"] == 0.0
    assert np.isnan(got["APs"])  # no box below 32x32 px: undefined, as COCOeval has it
    # detectron2's own evaluator (what --eval-only ran before) says NaN: "no value".
    assert np.isnan(evaluate(plain(name, tmp_path / "b"), predictions(name, empty=True))["AP"])


def test_a_dataset_without_json_is_checked_too(tmp_path):
    """Dicts in contiguous ids (no json): the degenerate box is dropped for evaluation as well."""
    coco = make_json(tmp_path / "bad.json")
    json_name = register(tmp_path / "bad.json")
    dicts = DatasetCatalog.get(json_name)  # raw dicts, the degenerate box still in
    name = f"dicts_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(thing_classes=[f"c{c}" for c in CATEGORY_IDS])
    gts = dataset_ground_truth(name, dicts)
    assert sum(len(g.boxes) for g in gts) == len(cleaned_by_hand(coco)["annotations"])
    assert {int(c) for g in gts for c in g.category_ids} <= {0, 1, 2}  # the dicts' own ids
    got = evaluate(checked(name, tmp_path / "a"), predictions(name))
    want = evaluate(checked(json_name, tmp_path / "b"), predictions(json_name))
    for k in METRICS:
        assert got[k] == pytest.approx(want[k], abs=1e-6, nan_ok=True), k
