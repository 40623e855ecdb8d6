"""
Per-image quality of detections: the evaluator's training target.

`saver_ap`: COCO AP@[.50:.95] of the saver's detections on one image against its ground truth,
averaged over the categories present in the image (see `coco_fast.per_image_ap` for the edge cases:
no ground truth -> 1.0, ground truth but no detections -> 0.0, crowd regions ignored as in COCO,
detected categories absent from the image do not enter the mean). Dataset-level AP follows the
same rule for no detections: 0 where there is ground truth (coco_fast, coco_evaluator).
`ap_gain`: the same AP of the base minus the saver's.
"""
import numpy as np

from .coco_fast import ImageDets, ImageGT, per_image_ap


def _xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def gt_from_instances(instances) -> ImageGT:
    """Ground truth from detectron2 training `Instances` (gt_boxes XYXY, gt_classes; crowd already removed)."""
    boxes = _xyxy_to_xywh(instances.gt_boxes.tensor.detach().cpu().numpy())
    return ImageGT(boxes=boxes, category_ids=instances.gt_classes.detach().cpu().numpy())


def dets_from_predictions(instances) -> ImageDets:
    """Detections from a detector's output `Instances`, with contiguous class ids as category ids."""
    return ImageDets(
        boxes=_xyxy_to_xywh(instances.pred_boxes.tensor.detach().cpu().numpy()),
        scores=instances.scores.detach().cpu().numpy(),
        category_ids=instances.pred_classes.detach().cpu().numpy(),
    )


def per_image_quality(gt_instances, pred_instances) -> float:
    """COCO AP@[.50:.95] of `pred_instances` on one image against `gt_instances` (same frame)."""
    return float(per_image_ap(gt_from_instances(gt_instances), dets_from_predictions(pred_instances)))
