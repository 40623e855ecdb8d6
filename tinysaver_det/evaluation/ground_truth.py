"""
One ground truth per dataset, for training, the caches, calibration and evaluation alike: the
dataset's annotations after the input checks (data/checks.py: boxes clipped to their image, empty
or degenerate ones dropped), on the dataset's own images, as a COCO json dict.

For a COCO-json dataset the json's own annotations are kept (ids, COCO areas, crowd flags, order),
only cleaned; without a json it is converted from the dataset dicts (box areas).
"""

import json
import os
from typing import Dict, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from ..data.checks import clean_annotations, clean_box
from ..metrics.coco_fast import ImageGT, gt_from_coco
from ..utils.quiet import quiet
from .detections import contiguous_to_dataset_id


def _cleaned_json_annotations(annotations: Sequence[dict], images: Dict[int, dict]) -> List[dict]:
    out = []
    for ann in annotations:
        image = images.get(ann["image_id"])
        if image is None:
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        box, clipped = clean_box([x, y, x + w, y + h], image.get("height"), image.get("width"))
        if box is None:
            continue
        if clipped:  # unclipped boxes keep their exact values
            ann = {**ann, "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]}
        out.append(ann)
    return out


def _coco_dict_from_dicts(dataset_name: str, dataset_dicts: Sequence[dict]) -> dict:
    to_dataset_id = contiguous_to_dataset_id(dataset_name)
    images, annotations = [], []
    for d in dataset_dicts:
        images.append(
            {
                "id": d["image_id"],
                "height": d["height"],
                "width": d["width"],
                "file_name": d.get("file_name", ""),
            }
        )
        for ann in clean_annotations(d)[0]["annotations"]:
            x, y, w, h = BoxMode.convert(list(ann["bbox"]), ann["bbox_mode"], BoxMode.XYWH_ABS)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": d["image_id"],
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": int(ann.get("iscrowd", 0)),
                    "category_id": int(to_dataset_id[ann["category_id"]]),
                }
            )
    classes = MetadataCatalog.get(dataset_name).get("thing_classes", None)
    if classes:
        categories = [{"id": to_dataset_id[i], "name": n} for i, n in enumerate(classes)]
    else:
        ids = sorted({a["category_id"] for a in annotations})
        categories = [{"id": c, "name": str(c)} for c in ids]
    return {"images": images, "annotations": annotations, "categories": categories}


def checked_coco_dict(dataset_name: str, dataset_dicts: Optional[Sequence[dict]] = None) -> dict:
    """
    The dataset's checked ground truth as a COCO json dict, on the images of `dataset_dicts`
    (default: the whole registered dataset). A dataset registered as part of a bigger json (the
    val halves) gets only its own images.
    """
    if dataset_dicts is None:
        dataset_dicts = DatasetCatalog.get(dataset_name)
    json_file = MetadataCatalog.get(dataset_name).get("json_file", None)
    if not (json_file and os.path.isfile(json_file)):
        return _coco_dict_from_dicts(dataset_name, dataset_dicts)
    with open(json_file) as f:
        full = json.load(f)
    wanted = {d["image_id"] for d in dataset_dicts}
    images = {im["id"]: im for im in full.get("images", []) if im["id"] in wanted}
    out = {k: v for k, v in full.items() if k not in ("images", "annotations")}
    out["images"] = list(images.values())
    if "annotations" in full:  # a test-set json has none: nothing to score
        out["annotations"] = _cleaned_json_annotations(full["annotations"], images)
    return out


def coco_api(coco_dict: dict):
    """A pycocotools COCO object over a json dict (no file)."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = coco_dict
    with quiet():
        coco.createIndex()
    return coco


def dataset_ground_truth(dataset_name: str, dataset_dicts: List[dict]) -> List[ImageGT]:
    """
    Checked ground truth of each of `dataset_dicts`' images (in their order), dataset category
    ids, in the original frame: what COCO evaluation scores against (CheckedCOCOEvaluator).
    """
    coco = coco_api(checked_coco_dict(dataset_name, dataset_dicts))
    return gt_from_coco(coco, [d["image_id"] for d in dataset_dicts])
