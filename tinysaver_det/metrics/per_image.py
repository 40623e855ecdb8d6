"""
Per-image COCO AP of a detector's output `Instances` against ground-truth `Instances`: the
`saver_ap` and `ap_gain` targets and the live oracle router's scores (see evaluation/quality.py for
the targets and `coco_fast.per_image_ap` for the edge cases).
"""

from typing import Mapping, Optional

import numpy as np
import torch

from detectron2.structures import BoxMode

from .coco_fast import ImageDets, ImageGT, per_image_ap


def xywh_boxes(boxes) -> np.ndarray:
    """detectron2 Boxes (or XYXY rows: a tensor or array) as a COCO XYWH float64 (N, 4) array."""
    boxes = getattr(boxes, "tensor", boxes)
    if torch.is_tensor(boxes):
        boxes = boxes.detach().cpu().numpy()
    xyxy = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return BoxMode.convert(xyxy, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)


def gt_from_instances(instances) -> ImageGT:
    """Ground truth from training `Instances` (gt_boxes XYXY, gt_classes; crowd already removed)."""
    return ImageGT(
        boxes=xywh_boxes(instances.gt_boxes),
        category_ids=instances.gt_classes.detach().cpu().numpy(),
    )


def dets_from_predictions(
    instances, to_dataset_id: Optional[Mapping[int, int]] = None
) -> ImageDets:
    """
    Detections from a detector's output `Instances` (pred_boxes XYXY, scores, pred_classes). The
    category ids are the contiguous class ids, or the dataset's through `to_dataset_id`.
    """
    classes = instances.pred_classes.detach().cpu().numpy().astype(np.int64).reshape(-1)
    if to_dataset_id is not None:
        classes = np.array([to_dataset_id[int(c)] for c in classes], dtype=np.int64)
    return ImageDets(
        boxes=xywh_boxes(instances.pred_boxes),
        scores=instances.scores.detach().cpu().numpy(),
        category_ids=classes,
    )


def per_image_quality(gt_instances, pred_instances) -> float:
    """COCO AP@[.50:.95] of `pred_instances` on one image against `gt_instances` (same frame)."""
    gt, dets = gt_from_instances(gt_instances), dets_from_predictions(pred_instances)
    return float(per_image_ap(gt, dets))
