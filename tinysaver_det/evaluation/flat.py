"""Ground truth and detections of many images as a few contiguous arrays plus image offsets.

Python objects per image cost ~1 KB of overhead each and cannot be memory-mapped; these
containers hold 118k images in a handful of arrays (which may be ``np.load(mmap_mode="r")``
views of a cache) and hand out ``ImageGT`` / ``ImageDets`` only for the chunk being processed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np

from ..metrics.coco_fast import ImageDets, ImageGT


def _check_offsets(offsets: np.ndarray, n: int, what: str) -> None:
    if offsets.ndim != 1 or offsets[0] != 0 or offsets[-1] != n or (np.diff(offsets) < 0).any():
        raise ValueError(f"{what}: offsets must rise from 0 to {n} (the number of rows)")


def _per_image(make, columns, offsets, lo: int, hi: int) -> list:
    """`make(*rows)` for images lo..hi-1, each with its rows of every column (read once a chunk)."""
    o = np.asarray(offsets[lo : hi + 1])
    cols = [np.asarray(x[o[0] : o[-1]]) for x in columns]
    o = o - o[0]
    return [make(*(x[o[i] : o[i + 1]] for x in cols)) for i in range(len(o) - 1)]


@dataclass
class FlatDets:
    """Detections of image i: rows ``offsets[i]:offsets[i+1]`` of boxes (XYWH), scores, ids."""

    boxes: np.ndarray
    scores: np.ndarray
    category_ids: np.ndarray
    offsets: np.ndarray

    def __post_init__(self):
        _check_offsets(np.asarray(self.offsets), len(self.scores), "FlatDets")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def chunk(self, lo: int, hi: int) -> List[ImageDets]:
        columns = (self.boxes, self.scores, self.category_ids)
        return _per_image(ImageDets, columns, self.offsets, lo, hi)

    def view(self, lo: int, hi: int) -> "FlatDets":
        """Images lo..hi-1 as a FlatDets (no object per image; the matching reads it as is)."""
        o = np.asarray(self.offsets[lo : hi + 1])
        cols = [np.asarray(x[o[0] : o[-1]]) for x in (self.boxes, self.scores, self.category_ids)]
        return FlatDets(*cols, o - o[0])


@dataclass
class FlatGT:
    """Ground truth of image i: rows ``offsets[i]:offsets[i+1]`` (XYWH boxes, ids, crowd, area)."""

    boxes: np.ndarray
    category_ids: np.ndarray
    iscrowd: np.ndarray
    area: np.ndarray
    offsets: np.ndarray

    def __post_init__(self):
        _check_offsets(np.asarray(self.offsets), len(self.category_ids), "FlatGT")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def chunk(self, lo: int, hi: int) -> List[ImageGT]:
        return _per_image(
            ImageGT, (self.boxes, self.category_ids, self.iscrowd, self.area), self.offsets, lo, hi
        )

    def view(self, lo: int, hi: int) -> "FlatGT":
        """Images lo..hi-1 as a FlatGT (no object per image)."""
        o = np.asarray(self.offsets[lo : hi + 1])
        columns = (self.boxes, self.category_ids, self.iscrowd, self.area)
        return FlatGT(*[np.asarray(x[o[0] : o[-1]]) for x in columns], o - o[0])


def chunk_of(x, lo: int, hi: int):
    """Images lo..hi-1 of a flat container (as a flat container) or of a plain sequence."""
    return x.view(lo, hi) if hasattr(x, "view") else list(x[lo:hi])


def category_ids_of(*containers) -> np.ndarray:
    """Sorted unique category ids over flat containers and/or sequences of images."""
    ids = set()
    for c in containers:
        if hasattr(c, "chunk"):
            ids.update(np.unique(np.asarray(c.category_ids)).tolist())
        else:
            for x in c:
                ids.update(np.asarray(x.category_ids).tolist())
    return np.array(sorted(ids), dtype=np.int64)
