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
    """tp, ig (N, A) uint16 (bit t: IoU threshold t) of N detections in (image, category, score
    desc) order; detection d's candidate ground truths (IoU >= min(thr)) are
    ``p_gt[pstart[d]:pstart[d+1]]`` in annotation order with IoUs ``p_iou``; ``notig`` (G, A):
    counted in area a; ``out_area`` (N, A): the detection's area is outside area range a.

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


@njit(cache=True, nogil=True)
def _iou(d, g, crowd):
    """maskUtils.iou of two XYWH boxes: the operations of ``coco_fast._pair_iou``."""
    w = min(d[2] + d[0], g[2] + g[0]) - max(d[0], g[0])
    h = min(d[3] + d[1], g[3] + g[1]) - max(d[1], g[1])
    if not (w > 0 and h > 0):
        return 0.0
    i = w * h
    da = d[2] * d[3]
    u = da if crowd else da + g[2] * g[3] - i
    return i / u


@njit(cache=True, nogil=True)
def match_source(offsets, cat, neg_score, boxes, ncat, max_dets, gt_key, gt_boxes, gt_crowd,
                 notig, thr, area_rng):  # fmt: skip
    """All of ``coco_fast._match`` after the columns are read: per image the detections in
    (category, score desc) order (``order_in_images``), cut to ``max_dets`` per category; the
    candidate ground truths of each (same image and category, IoU >= min(thr), in annotation
    order); then ``greedy_match``. Returns (kept rows in that order, their rank, tp, ig)."""
    order = order_in_images(offsets, cat, neg_score)
    n = len(order)
    keep = np.empty(n, np.int64)
    rank = np.empty(n, np.int64)
    img = np.empty(n, np.int64)
    nk, prev, r = 0, -1, 0
    for i in range(len(offsets) - 1):
        for j in range(offsets[i], offsets[i + 1]):
            key = i * ncat + cat[order[j]]
            r = r + 1 if key == prev else 0
            prev = key
            if r < max_dets:
                keep[nk] = order[j]
                rank[nk] = r
                img[nk] = i
                nk += 1
        prev = -1
    keep, rank, img = keep[:nk], rank[:nk], img[:nk]
    # Candidate pairs: detections and ground truth both ascend in key = image * ncat + cat.
    lo_g = np.empty(nk, np.int64)
    hi_g = np.empty(nk, np.int64)
    total, g = 0, 0
    for d in range(nk):
        key = img[d] * ncat + cat[keep[d]]
        while g < len(gt_key) and gt_key[g] < key:
            g += 1
        lo_g[d] = g
        e = g
        while e < len(gt_key) and gt_key[e] == key:
            e += 1
        hi_g[d] = e
        total += e - g
    p_gt = np.empty(total, np.int64)
    p_iou = np.empty(total)
    pstart = np.zeros(nk + 1, np.int64)
    lowest = thr.min()
    np_ = 0
    for d in range(nk):
        row = keep[d]
        for gi in range(lo_g[d], hi_g[d]):
            v = _iou(boxes[row], gt_boxes[gi], gt_crowd[gi])
            if v >= lowest:
                p_gt[np_] = gi
                p_iou[np_] = v
                np_ += 1
        pstart[d + 1] = np_
    out = np.zeros((nk, area_rng.shape[0]), np.bool_)
    for d in range(nk):
        b = boxes[keep[d]]
        da = b[2] * b[3]
        for a in range(area_rng.shape[0]):
            out[d, a] = da < area_rng[a, 0] or da > area_rng[a, 1]
    tp, ig = greedy_match(pstart, p_gt, p_iou, notig, gt_crowd, thr, out, len(gt_key))
    return keep, rank, img, tp, ig
