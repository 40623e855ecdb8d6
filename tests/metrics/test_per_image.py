"""metrics/per_image.py: detectron2 Instances as COCO XYWH ground truth and detections; their AP."""

import numpy as np
import pytest
import torch

from detectron2.structures import Boxes, Instances
from tinysaver_det.metrics.per_image import (
    dets_from_predictions,
    gt_from_instances,
    per_image_quality,
    xywh_boxes,
)


def predictions(boxes, scores, classes):
    inst = Instances((100, 120))
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
    return inst


def test_xywh_boxes_from_boxes_tensors_and_arrays():
    xyxy = [[10.1, 20.0, 30.7, 60.0], [0.0, 0.0, 1.0, 1.0]]
    want = np.array([[10.1, 20.0, 30.7 - 10.1, 40.0], [0.0, 0.0, 1.0, 1.0]])
    as_boxes = Boxes(torch.tensor(xyxy, dtype=torch.float64))
    for boxes in (as_boxes, torch.tensor(xyxy), np.array(xyxy)):
        got = xywh_boxes(boxes)
        assert got.dtype == np.float64 and got.shape == (2, 4)
        np.testing.assert_allclose(got, want, rtol=1e-6)
    # float32 corners are widened before subtracting, as coco_fast computes areas in float64.
    corners = np.array(xyxy, dtype=np.float32)
    np.testing.assert_array_equal(
        xywh_boxes(torch.from_numpy(corners))[:, 2],
        corners[:, 2].astype(np.float64) - corners[:, 0],
    )
    assert xywh_boxes(Boxes(torch.zeros(0, 4))).shape == (0, 4)


def test_dets_from_predictions_keeps_contiguous_ids_or_maps_them():
    inst = predictions([[10, 20, 30, 60], [0, 0, 5, 5]], [0.7, 0.2], [0, 2])
    plain = dets_from_predictions(inst)
    np.testing.assert_allclose(plain.boxes, [[10, 20, 20, 40], [0, 0, 5, 5]])
    np.testing.assert_array_equal(plain.category_ids, [0, 2])
    np.testing.assert_allclose(plain.scores, [0.7, 0.2], rtol=1e-6)
    mapped = dets_from_predictions(inst, {0: 5, 2: 90})
    np.testing.assert_array_equal(mapped.category_ids, [5, 90])
    with pytest.raises(KeyError):
        dets_from_predictions(inst, {0: 5})  # a class the dataset does not have
    empty = dets_from_predictions(predictions([], [], []), {0: 5})
    assert empty.boxes.shape == (0, 4) and empty.category_ids.dtype == np.int64


def test_per_image_quality_of_instances():
    gt = Instances((100, 120))
    gt.gt_boxes = Boxes(torch.tensor([[10.0, 20.0, 50.0, 70.0]]))
    gt.gt_classes = torch.tensor([1])
    np.testing.assert_allclose(gt_from_instances(gt).boxes, [[10, 20, 40, 50]])
    assert per_image_quality(gt, predictions([[10, 20, 50, 70]], [0.9], [1])) == pytest.approx(1.0)
    assert per_image_quality(gt, predictions([[10, 20, 50, 70]], [0.9], [0])) == 0.0  # wrong class
    assert per_image_quality(gt, predictions([[80, 80, 90, 95]], [0.9], [1])) == 0.0  # misplaced
