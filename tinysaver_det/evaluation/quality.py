"""
Per-image quality of detections: the evaluator's training target.

`saver_ap`: COCO AP@[.50:.95] of the saver's detections on one image against its ground truth,
averaged over the categories present in the image (see `coco_fast.per_image_ap` for the edge cases:
no ground truth -> 1.0, ground truth but no detections -> 0.0, crowd regions ignored as in COCO,
detected categories absent from the image do not enter the mean). Dataset-level AP follows the
same rule for no detections: 0 where there is ground truth (coco_fast, coco_evaluator).
`ap_gain`: the same AP of the base minus the saver's.
`marginal_ap`: the change of the *dataset's* AP when only this image's detections come from the
saver instead of the base, times the number of images (so its scale is a per-image AP's, in [0, 1]
units). Unlike the per-image figures it weighs an image by the boxes it holds and does not reward
per-image noise that cancels over a dataset; it is what a router is judged on. Exact up to 2000
images (tested against pycocotools), above that a near-linear approximation with a tested error
bound (`coco_sweep.SweepTable.marginal_ap`, `coco_marginal`).

Higher means better to exit for saver_ap and marginal_ap; for ap_gain lower is
(see routing_quality).
"""
from typing import Mapping, Optional, Sequence

import numpy as np
import torch

from detectron2.structures import BoxMode

from .coco_fast import ImageDets, ImageGT, per_image_ap
from .coco_sweep import SweepTable


def xywh_boxes(boxes) -> np.ndarray:
    """detectron2 Boxes (or XYXY rows: a tensor or array) as a COCO XYWH float64 (N, 4) array."""
    boxes = getattr(boxes, "tensor", boxes)
    if torch.is_tensor(boxes):
        boxes = boxes.detach().cpu().numpy()
    xyxy = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return BoxMode.convert(xyxy, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)


def gt_from_instances(instances) -> ImageGT:
    """Ground truth from training `Instances` (gt_boxes XYXY, gt_classes; crowd already removed)."""
    return ImageGT(boxes=xywh_boxes(instances.gt_boxes),
                   category_ids=instances.gt_classes.detach().cpu().numpy())


def dets_from_predictions(instances,
                          to_dataset_id: Optional[Mapping[int, int]] = None) -> ImageDets:
    """
    Detections from a detector's output `Instances` (pred_boxes XYXY, scores, pred_classes). The
    category ids are the contiguous class ids, or the dataset's through `to_dataset_id`.
    """
    classes = instances.pred_classes.detach().cpu().numpy().astype(np.int64).reshape(-1)
    if to_dataset_id is not None:
        classes = np.array([to_dataset_id[int(c)] for c in classes], dtype=np.int64)
    return ImageDets(boxes=xywh_boxes(instances.pred_boxes),
                     scores=instances.scores.detach().cpu().numpy(), category_ids=classes)


def per_image_quality(gt_instances, pred_instances) -> float:
    """COCO AP@[.50:.95] of `pred_instances` on one image against `gt_instances` (same frame)."""
    gt, dets = gt_from_instances(gt_instances), dets_from_predictions(pred_instances)
    return float(per_image_ap(gt, dets))


def marginal_targets(gts: Sequence[ImageGT], saver: Sequence[ImageDets],
                     base: Sequence[ImageDets], exact: Optional[bool] = None) -> np.ndarray:
    """
    The marginal_ap target of every image of a split: N x (AP of the split with image i's
    detections from the saver and every other image's from the base - AP of the base) / 100.
    Images should come in ascending image id order (pycocotools' tie order). ``exact``: as
    `SweepTable.marginal_ap` (default: exact up to 2000 images, else the bounded approximation).
    """
    if not len(gts):
        return np.zeros(0)
    return marginal_targets_of(SweepTable.build(list(gts), list(saver), list(base)), exact)


def marginal_targets_of(table: SweepTable, exact: Optional[bool] = None) -> np.ndarray:
    """marginal_targets of a split whose (saver, base) SweepTable is already built."""
    return table.marginal_ap(exact=exact) * table.num_images / 100.0


def routing_quality(target: str, saver_ap, base_ap=None, marginal=None) -> np.ndarray:
    """
    The true quality of exiting each image under a target, oriented like router scores (higher =
    better to exit): saver_ap, minus the base's gain, or the marginal effect on the dataset's AP.
    """
    if target == "saver_ap":
        return np.asarray(saver_ap, np.float64)
    if target == "ap_gain":
        return -(np.asarray(base_ap, np.float64) - np.asarray(saver_ap, np.float64))
    if target == "marginal_ap":
        if marginal is None:
            raise ValueError("the marginal_ap target needs the marginal effects (marginal_targets)")
        return np.asarray(marginal, np.float64)
    raise ValueError(f"Unknown MODEL.TINYSAVER.EVALUATOR.TARGET {target!r}")
