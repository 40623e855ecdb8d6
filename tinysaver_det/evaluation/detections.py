"""
A detector's detections of one image as the caches and the routing evaluator store them: top
detections, COCO XYWH boxes in the original frame, the dataset's own category ids.
"""

from typing import Dict

import numpy as np

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..metrics.coco_fast import ImageDets
from ..metrics.per_image import dets_from_predictions

MAX_STORED_DETECTIONS = 100


def contiguous_to_dataset_id(dataset_name: str) -> Dict[int, int]:
    """
    The model's contiguous class ids -> the dataset's category ids (COCO's are not contiguous).

    load_coco_json sets the map in the metadata only when the dataset is first loaded, so a
    COCO-json dataset whose map is not there yet is loaded here first: reading the metadata too
    early gave an identity map, and every detection of a real COCO set the wrong category.
    Datasets without a map (dicts already in contiguous ids) map each id to itself.
    """
    meta = MetadataCatalog.get(dataset_name)
    mapping = meta.get("thing_dataset_id_to_contiguous_id", None)
    if not mapping and (meta.get("json_file", None) or not meta.get("thing_classes", None)):
        if dataset_name in DatasetCatalog.list():
            DatasetCatalog.get(dataset_name)
            mapping = meta.get("thing_dataset_id_to_contiguous_id", None)
    if mapping:
        return {v: k for k, v in mapping.items()}
    return {i: i for i in range(len(meta.get("thing_classes", [])) or 1000)}


def detections_record(instances, to_dataset_id: Dict[int, int]) -> Dict[str, np.ndarray]:
    """Top detections of one image, XYWH in the original frame, dataset category ids."""
    instances = instances.to("cpu")
    if len(instances) > MAX_STORED_DETECTIONS:
        instances = instances[instances.scores.argsort(descending=True)[:MAX_STORED_DETECTIONS]]
    dets = dets_from_predictions(instances, to_dataset_id)
    return {
        "boxes": dets.boxes.astype(np.float32),
        "scores": dets.scores.astype(np.float32),
        "category_ids": dets.category_ids,
    }


def record_dets(record_part: Dict[str, np.ndarray]) -> ImageDets:
    """ImageDets of a stored detections record."""
    return ImageDets(
        boxes=record_part["boxes"],
        scores=record_part["scores"],
        category_ids=record_part["category_ids"],
    )
