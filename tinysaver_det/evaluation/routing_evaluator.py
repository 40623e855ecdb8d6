"""
RoutingEvaluator: the routing side of a TinySaver evaluation, next to COCOEvaluator in
DatasetEvaluators: exit rate, GFLOPs per image, compute saved, COCO AP of the images each path
handled (images per second: ThroughputEvaluator). Works under inference_on_dataset, distributed
included.
"""

import itertools
import logging
import os
from collections import OrderedDict
from typing import Dict, Optional

import numpy as np

from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from ..flops import compute_saved, routed_gflops
from ..metrics.coco_fast import MatchTable
from ..utils.atomic import atomic_save_json
from .calibration import METRICS
from .detections import contiguous_to_dataset_id, detections_record, record_dets
from .ground_truth import dataset_ground_truth

logger = logging.getLogger(__name__)


class RoutingEvaluator(DatasetEvaluator):
    """
    Args:
        dataset_name: the evaluated dataset (its ground truth gives the per-path AP).
        costs: GFLOPs per image of saver, evaluator and base (flops.tinysaver_costs); None leaves
            the compute figures out.
        output_dir: where routing.json (per-image decisions and the summary) is written.
    """

    def __init__(
        self, dataset_name: str, costs: Optional[Dict[str, float]] = None, output_dir: str = ""
    ):
        self.dataset_name = dataset_name
        self.costs = costs
        self.output_dir = output_dir
        self._to_dataset_id = None  # resolved once the dataset is loaded: see process()
        self.reset()

    def reset(self):
        self._rows = []

    def process(self, inputs, outputs):
        if self._to_dataset_id is None:
            self._to_dataset_id = contiguous_to_dataset_id(self.dataset_name)
        for x, out in zip(inputs, outputs):
            routing = out.get("tinysaver", {})
            self._rows.append(
                {
                    "image_id": x["image_id"],
                    "score": float(routing.get("score", float("nan"))),
                    "exited": bool(routing.get("exited", False)),
                    "dets": detections_record(out["instances"], self._to_dataset_id),
                }
            )

    def evaluate(self):
        rows = comm.gather(self._rows, dst=0)
        if not comm.is_main_process():
            return {}
        rows = sorted(itertools.chain(*rows), key=lambda r: r["image_id"])
        if not rows:
            logger.warning("RoutingEvaluator received no predictions")
            return {}
        dicts = DatasetCatalog.get(self.dataset_name)
        index = {d["image_id"]: i for i, d in enumerate(dicts)}
        gts_all = dataset_ground_truth(self.dataset_name, dicts)
        gts = [gts_all[index[r["image_id"]]] for r in rows]
        exited = np.array([r["exited"] for r in rows])
        result = OrderedDict()
        result["num_images"] = len(rows)
        result["exit_rate"] = float(exited.mean())
        if self.costs:
            result["gflops_per_image"] = routed_gflops(self.costs, result["exit_rate"])
            result["compute_saved"] = compute_saved(self.costs, result["exit_rate"])
        for path, mask in (("saver", exited), ("base", ~exited)):
            ids = np.flatnonzero(mask)
            if len(ids) == 0:
                continue
            dets = [record_dets(rows[i]["dets"]) for i in ids]
            table = MatchTable.build([gts[i] for i in ids], {path: dets})
            metrics = table.source_metrics(path)
            for k in METRICS:
                result[f"{k}_{path}_images"] = float(metrics[k])
        if self.output_dir:
            images = [{k: r[k] for k in ("image_id", "score", "exited")} for r in rows]
            atomic_save_json(
                {"summary": result, "images": images}, os.path.join(self.output_dir, "routing.json")
            )
        return {"routing": result}
