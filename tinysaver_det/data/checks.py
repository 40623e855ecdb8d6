"""
Input checks before a run spends time on a dataset: unreadable images are listed up front (or
skipped with a warning), degenerate and out-of-image boxes are cleaned with a count, and images of
any common pixel format (grayscale, RGBA, 16-bit, EXIF-rotated) read as 8-bit images of the
configured channel order.
"""

import copy
import logging
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageOps

from detectron2.data import (
    DatasetCatalog,
    DatasetMapper,
    MetadataCatalog,
    detection_utils as utils,
    transforms as T,
)
from detectron2.structures import BoxMode

logger = logging.getLogger(__name__)

# Modes whose samples exceed 8 bits: scaled down, since a plain convert("RGB") would saturate them.
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def read_image_any(file_name: str, format: str = "BGR") -> np.ndarray:
    """
    detectron2's read_image (EXIF orientation applied, grayscale and RGBA converted), with 16-bit
    and 32-bit images scaled to 8 bits by their own range instead of being clipped to white.
    """
    with open(file_name, "rb") as f:
        image = Image.open(f)
        image = ImageOps.exif_transpose(image)
        if image.mode in HIGH_BIT_MODES:
            array = np.asarray(image, dtype=np.float64)
            top = array.max() if array.size and array.max() > 0 else 1.0
            image = Image.fromarray((array * (255.0 / top)).round().astype(np.uint8), mode="L")
        return utils.convert_PIL_to_numpy(image, format)


def image_problem(file_name: str) -> Optional[str]:
    """Why an image file cannot be used (missing, empty, truncated, not an image), or None."""
    if not os.path.isfile(file_name):
        return "missing"
    if os.path.getsize(file_name) == 0:
        return "empty file"
    try:
        with Image.open(file_name) as image:
            image.load()  # a full decode: truncated JPEGs only fail here
    except Exception as e:  # PIL raises many types for bad files
        return f"unreadable ({type(e).__name__}: {e})"
    return None


def clean_box(xyxy: Sequence[float], height: Optional[int], width: Optional[int]):
    """
    One box (XYXY) clipped to its image: (the box, whether it was clipped), or (None, ...) when it
    ends up empty (zero-size, degenerate, not finite or wholly outside) and is dropped.
    Training, the caches, calibration and evaluation all clean ground truth with this rule.
    """
    x0, y0, x1, y1 = (float(v) for v in xyxy)
    clipped = False
    if height is not None and width is not None:
        cx0, cy0 = max(0.0, x0), max(0.0, y0)
        cx1, cy1 = min(float(width), x1), min(float(height), y1)
        clipped = (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1)
        x0, y0, x1, y1 = cx0, cy0, cx1, cy1
    if not (np.isfinite([x0, y0, x1, y1]).all() and x1 - x0 > 0 and y1 - y0 > 0):
        return None, clipped
    return [x0, y0, x1, y1], clipped


def clean_annotations(record: dict) -> Tuple[dict, int, int]:
    """
    Clip boxes to the image and drop the ones that end up empty (zero-size, degenerate or wholly
    outside). Returns the record and the numbers of clipped and dropped boxes.
    """
    h, w = record.get("height"), record.get("width")
    kept, clipped, dropped = [], 0, 0
    for ann in record.get("annotations", []):
        box = BoxMode.convert(list(ann["bbox"]), ann["bbox_mode"], BoxMode.XYXY_ABS)
        box, was_clipped = clean_box(box, h, w)
        clipped += was_clipped
        if box is None:
            dropped += 1
            continue
        kept.append({**ann, "bbox": box, "bbox_mode": BoxMode.XYXY_ABS})
    return {**record, "annotations": kept}, clipped, dropped


def missing_data_message(name: str, path: str) -> str:
    """Why a dataset's file is missing, with where relative data paths resolve."""
    root = os.getenv("DETECTRON2_DATASETS")
    where = (
        f"$DETECTRON2_DATASETS is {root!r}"
        if root
        else "$DETECTRON2_DATASETS is not set, so "
        f"it is 'datasets' in the working directory {os.getcwd()!r}"
    )
    return (
        f"Dataset {name!r}: {path!r} does not exist. Datasets are registered under the data root "
        f"when tinysaver_det is imported, and {where}. Set DETECTRON2_DATASETS to the folder that "
        "holds the data (datasets/prepare_synthetic.py generates the synthetic splits)."
    )


def check_dataset_files(names: Sequence[str]) -> None:
    """Refuse datasets whose registered json or image folder is missing, before a run starts."""
    for name in names:
        meta = MetadataCatalog.get(name)
        for path in (meta.get("json_file", None), meta.get("image_root", None)):
            if path and "://" not in path and not os.path.exists(path):
                raise FileNotFoundError(missing_data_message(name, path))


def load_dataset_dicts(name: str) -> List[dict]:
    """DatasetCatalog.get, naming a missing file and the data root it was looked for in."""
    check_dataset_files([name])
    try:
        return DatasetCatalog.get(name)
    except FileNotFoundError as e:
        raise FileNotFoundError(missing_data_message(name, e.filename or str(e))) from e


def checked_dataset_dicts(names: Sequence[str], skip_bad_images: bool = False) -> List[dict]:
    """
    The dataset dicts of `names`, with every image file checked and every box cleaned.

    Unreadable images make it fail with the list of files (the first 20 named), unless
    `skip_bad_images` (MODEL.TINYSAVER.DATA.SKIP_BAD_IMAGES), which drops them with a warning.
    """
    out = []
    for name in names:
        dicts = load_dataset_dicts(name)
        problems = [(d["file_name"], image_problem(d["file_name"])) for d in dicts]
        bad = [(f, p) for f, p in problems if p is not None]
        if bad:
            listing = "\n".join(f"  {f}: {p}" for f, p in bad[:20])
            listing += "\n  ..." if len(bad) > 20 else ""
            if not skip_bad_images:
                raise ValueError(
                    f"{len(bad)} of {len(dicts)} images of dataset {name!r} cannot be read:\n"
                    f"{listing}\nFix or remove them, or set MODEL.TINYSAVER.DATA.SKIP_BAD_IMAGES "
                    "True to skip them."
                )
            logger.warning(f"Skipping {len(bad)} unreadable images of {name!r}:\n{listing}")
            bad_files = {f for f, _ in bad}
            dicts = [d for d in dicts if d["file_name"] not in bad_files]
        clipped = dropped = 0
        for d in dicts:
            d, c, k = clean_annotations(d)
            clipped, dropped = clipped + c, dropped + k
            out.append(d)
        if clipped or dropped:
            logger.warning(
                f"{name}: clipped {clipped} boxes to their image and dropped "
                f"{dropped} empty or degenerate ones"
            )
    return out


class RobustDatasetMapper(DatasetMapper):
    """
    DatasetMapper that reads images with read_image_any (16-bit aware); otherwise unchanged. Its
    __call__ is DatasetMapper's with that reader, as DensePose's and Mask2Former's mappers write
    their own: detectron2's mapper reads through the module-level read_image and has no hook for it.
    """

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)  # the code below modifies it
        image = read_image_any(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        sem_seg = None
        if "sem_seg_file_name" in dataset_dict:
            sem_seg = utils.read_image(dataset_dict.pop("sem_seg_file_name"), "L").squeeze(2)

        aug_input = T.AugInput(image, sem_seg=sem_seg)
        transforms = self.augmentations(aug_input)
        image, sem_seg = aug_input.image, aug_input.sem_seg
        image_shape = image.shape[:2]
        # Tensors, not arrays: the data loader moves tensors through shared memory.
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(sem_seg.astype("long"))
        if self.proposal_topk is not None:
            utils.transform_proposals(
                dataset_dict, image_shape, transforms, proposal_topk=self.proposal_topk
            )

        if not self.is_train:
            dataset_dict.pop("annotations", None)
            dataset_dict.pop("sem_seg_file_name", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict


def build_test_mapper(cfg, with_ground_truth: bool = False) -> RobustDatasetMapper:
    """
    The test-time mapper (test resize, no augmentation). With `with_ground_truth` each image keeps
    its non-crowd boxes as "instances" in the resized frame, as training inputs carry them: the
    oracle router scores images by their true quality. detectron2's mapper drops annotations
    exactly when is_train is False, so the test augmentations are built and is_train is set.
    """
    args = RobustDatasetMapper.from_config(cfg, is_train=False)
    args["is_train"] = with_ground_truth
    return RobustDatasetMapper(**args)
