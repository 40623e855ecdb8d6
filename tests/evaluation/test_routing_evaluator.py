"""
RoutingEvaluator's AP per path equals detectron2's COCOEvaluator on the same images, on real COCO
(non-contiguous category ids), even when the evaluator is built before the dataset is loaded.
"""

import os
import uuid

import numpy as np
import pytest
import torch

import tinysaver_det  # noqa: F401  (registers the datasets)
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, BoxMode, Instances
from tinysaver_det.data.datasets import SHARED_COCO_SETS, default_shared_root
from tinysaver_det.evaluation.calibration import METRICS
from tinysaver_det.evaluation.routing_evaluator import RoutingEvaluator

FOLDER, JSON, IMAGES = SHARED_COCO_SETS["coco_2017_val_subset158"]
SHARED = os.path.join(default_shared_root(), FOLDER)
pytestmark = pytest.mark.skipif(
    not os.path.isdir(SHARED), reason=f"shared COCO subset absent: {SHARED} (TINYSAVER_SHARED_DATA)"
)
NUM_IMAGES = 30


def fresh_coco_subset() -> str:
    """The 158-image COCO subset under a new name: its category map is not loaded yet."""
    name = f"routing_coco_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, os.path.join(SHARED, JSON), os.path.join(SHARED, IMAGES))
    return name


def detections_of(record: dict, rng: np.random.Generator, wrong: bool) -> Instances:
    """The image's own non-crowd boxes as detections; `wrong` shifts some and mislabels others."""
    anns = [a for a in record["annotations"] if not a.get("iscrowd", 0)]
    boxes = [BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
    boxes = np.array(boxes, dtype=np.float32).reshape(-1, 4)
    classes = np.array([a["category_id"] for a in anns], dtype=np.int64)
    if wrong:
        shift = (boxes[:, 2] - boxes[:, 0]) * rng.uniform(0.1, 0.6, len(boxes))
        boxes[::2, [0, 2]] += shift[::2, None]
        classes[1::3] = (classes[1::3] + 1) % 80
    inst = Instances((record["height"], record["width"]))
    inst.pred_boxes = Boxes(torch.from_numpy(boxes))
    inst.scores = torch.from_numpy(rng.uniform(0.05, 1.0, len(boxes)).astype(np.float32))
    inst.pred_classes = torch.from_numpy(classes)
    return inst


def run_both(name: str, tmp_path, wrong_every: int):
    """Yield (path, RoutingEvaluator's metrics, COCOEvaluator's on that path's images)."""
    routing = RoutingEvaluator(name)  # built before anything loaded the dataset, as in --eval-only
    # One COCOEvaluator per path: it rewrites its stored predictions' ids when it evaluates.
    coco = {
        p: COCOEvaluator(name, tasks=("bbox",), distributed=False, output_dir=str(tmp_path / p))
        for p in ("saver", "base")
    }
    for e in [routing, *coco.values()]:
        e.reset()
    rng = np.random.default_rng(0)
    ids = {"saver": [], "base": []}
    for i, record in enumerate(DatasetCatalog.get(name)[:NUM_IMAGES]):
        wrong = wrong_every > 0 and i % wrong_every == 1
        inputs = [{k: record[k] for k in ("image_id", "height", "width")}]
        outputs = [
            {
                "instances": detections_of(record, rng, wrong),
                "tinysaver": {"score": float(i), "exited": i % 3 == 0},
            }
        ]
        routing.process(inputs, outputs)
        path = "saver" if i % 3 == 0 else "base"
        coco[path].process(inputs, outputs)
        ids[path].append(record["image_id"])
    result = routing.evaluate()["routing"]
    for path in ("saver", "base"):
        want = coco[path].evaluate(img_ids=ids[path])["bbox"]  # default: all images of the json
        got = {k: result[f"{k}_{path}_images"] for k in METRICS}
        yield path, got, {k: want[k] for k in METRICS}


def test_perfect_detections_score_100_on_each_path(tmp_path):
    for path, got, want in run_both(fresh_coco_subset(), tmp_path, wrong_every=0):
        assert want["AP"] == pytest.approx(100.0), path
        for k in METRICS:
            assert got[k] == pytest.approx(want[k], abs=1e-6, nan_ok=True), (path, k)


def test_ap_per_path_equals_coco_evaluator_with_wrong_detections(tmp_path):
    for path, got, want in run_both(fresh_coco_subset(), tmp_path, wrong_every=2):
        assert 10.0 < want["AP"] < 95.0, path  # the wrong images cost AP on both paths
        for k in METRICS:
            assert got[k] == pytest.approx(want[k], abs=1e-6, nan_ok=True), (path, k)
