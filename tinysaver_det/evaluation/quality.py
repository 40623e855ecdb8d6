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

from typing import Optional, Sequence

import numpy as np

from ..metrics.coco_fast import ImageDets, ImageGT
from ..modeling.routing import gain_oracle_scores
from .coco_sweep import SweepTable


def marginal_targets(
    gts: Sequence[ImageGT],
    saver: Sequence[ImageDets],
    base: Sequence[ImageDets],
    exact: Optional[bool] = None,
) -> np.ndarray:
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
        return gain_oracle_scores(saver_ap, base_ap).numpy()
    if target == "marginal_ap":
        if marginal is None:
            raise ValueError("the marginal_ap target needs the marginal effects (marginal_targets)")
        return np.asarray(marginal, np.float64)
    raise ValueError(f"Unknown MODEL.TINYSAVER.EVALUATOR.TARGET {target!r}")
