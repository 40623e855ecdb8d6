"""
COCOEvaluator against the checked ground truth (evaluation/ground_truth.py), so COCO AP scores
the same boxes the model trained on and the caches and calibration scored: detectron2's own
reads the dataset's json as it is, degenerate boxes the input checks dropped included, and all
of the json's images (the val halves share one json with the other half).

Convention for a model that detects nothing: AP is 0 wherever there is ground truth to find
(COCOeval's value; detectron2 reports NaN there only because pycocotools cannot load an empty
result list), and NaN only where it is undefined (no ground truth of that size). coco_fast,
calibration and the routing evaluator follow the same rule.
"""

import math
from typing import Optional, Sequence

import numpy as np

from detectron2.evaluation import COCOEvaluator

from ..metrics.coco_fast import ImageDets, MatchTable, gt_from_coco
from .ground_truth import checked_coco_dict, coco_api

EMPTY = ImageDets(boxes=np.zeros((0, 4)), scores=np.zeros(0), category_ids=np.zeros(0))


class CheckedCOCOEvaluator(COCOEvaluator):
    """
    detectron2's COCOEvaluator (same arguments, same output) scoring against the checked ground
    truth of `dataset_name` on its own images.

    Args:
        dataset_dicts: the images evaluated (default: the registered dataset's).
    """

    def __init__(
        self, dataset_name: str, *args, dataset_dicts: Optional[Sequence[dict]] = None, **kwargs
    ):
        super().__init__(dataset_name, *args, **kwargs)
        self._coco_api = coco_api(checked_coco_dict(dataset_name, dataset_dicts))
        self._do_evaluation = "annotations" in self._coco_api.dataset

    def evaluate(self, img_ids=None):
        results = super().evaluate(img_ids)
        box = results.get("bbox") if results else None
        if box and all(math.isnan(v) for v in box.values()) and self._do_evaluation:
            results["bbox"] = self._no_detection_metrics(box, img_ids)
        return results

    def _no_detection_metrics(self, box: dict, img_ids) -> dict:
        """Metrics of no detections at all: 0 where there is ground truth, NaN where none."""
        ids = sorted(self._coco_api.getImgIds() if img_ids is None else img_ids)
        gts = gt_from_coco(self._coco_api, ids)
        table = MatchTable.build(gts, {"none": [EMPTY] * len(gts)})
        return {**box, **table.source_metrics("none")}
