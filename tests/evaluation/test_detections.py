"""Stored detections: category ids mapped back to the dataset's, whenever the map is asked for."""

import json
import uuid

import numpy as np
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.structures import Boxes, Instances
from tinysaver_det.evaluation.detections import (
    MAX_STORED_DETECTIONS,
    contiguous_to_dataset_id,
    detections_record,
    record_dets,
)

CATEGORY_IDS = [3, 7, 90]  # not contiguous, as in COCO


def register_json(tmp_path) -> str:
    path = tmp_path / "tiny.json"
    path.write_text(
        json.dumps(
            {
                "images": [{"id": 5, "file_name": "a.jpg", "height": 40, "width": 50}],
                "annotations": [
                    {
                        "id": 1,
                        "image_id": 5,
                        "bbox": [1, 2, 10, 12],
                        "area": 120,
                        "iscrowd": 0,
                        "category_id": 90,
                    }
                ],
                "categories": [{"id": c, "name": f"c{c}"} for c in CATEGORY_IDS],
            }
        )
    )
    name = f"dets_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, str(path), str(tmp_path))
    return name


def test_map_is_right_before_the_dataset_was_loaded(tmp_path):
    name = register_json(tmp_path)
    assert not MetadataCatalog.get(name).get("thing_dataset_id_to_contiguous_id", None)
    assert contiguous_to_dataset_id(name) == {0: 3, 1: 7, 2: 90}


def test_dataset_without_a_map_keeps_its_ids():
    name = f"dicts_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(thing_classes=["a", "b"])
    assert contiguous_to_dataset_id(name) == {0: 0, 1: 1}


def test_detections_record_keeps_the_top_scores_in_dataset_ids():
    n = MAX_STORED_DETECTIONS + 20
    inst = Instances((40, 50))
    xy = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 2) % 30
    inst.pred_boxes = Boxes(torch.cat([xy, xy + 5], dim=1))
    inst.scores = torch.linspace(0.01, 1.0, n)
    inst.pred_classes = torch.arange(n) % 3
    record = detections_record(inst, {0: 3, 1: 7, 2: 90})
    assert len(record["scores"]) == MAX_STORED_DETECTIONS
    assert record["scores"].min() >= float(inst.scores[20]) - 1e-6  # the 20 lowest were cut
    kept = inst.scores.argsort(descending=True)[:MAX_STORED_DETECTIONS].numpy()
    np.testing.assert_array_equal(record["category_ids"], np.array([3, 7, 90])[kept % 3])
    np.testing.assert_allclose(record["boxes"][:, 2:], 5.0)  # XYWH
    dets = record_dets(record)
    assert dets.boxes.shape == (MAX_STORED_DETECTIONS, 4) and dets.category_ids.dtype == np.int64
