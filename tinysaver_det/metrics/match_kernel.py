"""Compiled (numba) greedy matching of ``coco_fast._match``: COCOeval.evaluateImg's loop.

Why compiled: the vectorised matching steps over detection ranks with (pairs, T, A) temporaries
and costs ~0.09 s per 1000 images and source; 118k images of two sources took ~25 s of a sweep
table's build (bench/cost_growth.py). This loop does the same decisions per detection, in score
order within each (image, category); ``_match(..., compiled=False)`` is the numpy reference and
tests compare both.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def greedy_match(pstart, p_gt, p_iou, notig, crowd, thr, out_area, num_gt):
    """tp, ig (N, A) uint16, bit t for IoU threshold t, of N detections in (image, category, score desc) order; detection d's
    candidate ground truths (IoU >= min(thr)) are ``p_gt[pstart[d]:pstart[d+1]]`` in annotation
    order with IoUs ``p_iou``; ``notig`` (G, A): counted in area a; ``out_area`` (N, A): the
    detection's area is outside area range a.

    As evaluateImg, per threshold and area: counted ground truths come first, then ignored
    ones; among those not yet matched (crowd: always available) the last with the highest IoU
    >= the threshold wins, and an ignored one is only tried when no counted one matched."""
    n, nt, na = len(pstart) - 1, len(thr), notig.shape[1]
    tp = np.zeros((n, na), np.uint16)
    ig = np.zeros((n, na), np.uint16)
    matched = np.zeros((num_gt, nt, na), np.bool_)
    for d in range(n):
        for a in range(na):
            for t in range(nt):
                m = -1
                for tier in range(2):  # 0: counted ground truth, 1: ignored (only if none)
                    if m >= 0:
                        break
                    best = thr[t]
                    for j in range(pstart[d], pstart[d + 1]):
                        g = p_gt[j]
                        if notig[g, a] != (tier == 0):
                            continue
                        if matched[g, t, a] and not crowd[g]:
                            continue
                        if p_iou[j] >= best:
                            best = p_iou[j]
                            m = g
                bit = np.uint16(1 << t)
                if m >= 0:
                    matched[m, t, a] = True
                    if notig[m, a]:
                        tp[d, a] |= bit
                    else:
                        ig[d, a] |= bit
                elif out_area[d, a]:
                    ig[d, a] |= bit
    return tp, ig


@njit(cache=True, nogil=True)
def order_in_images(offsets, cat, neg_score):
    """The order of np.lexsort((neg_score, image * ncat + cat)) for rows grouped by image
    (``offsets``): within each image by category, then score descending, stable."""
    out = np.empty(len(cat), np.int64)
    for i in range(len(offsets) - 1):
        lo, hi = offsets[i], offsets[i + 1]
        o = np.argsort(neg_score[lo:hi], kind="mergesort")
        o = o[np.argsort(cat[lo:hi][o], kind="mergesort")]
        out[lo:hi] = o + lo
    return out
