"""Exact COCO box metrics in vectorised numpy, for per-image targets and threshold sweeps.

Why this exists: TinySaver needs COCO AP far more often than a normal evaluation does.

* The evaluator learns a per-image AP target on thousands of training images; pycocotools
  would need a separate ``COCOeval`` per image (milliseconds each, plus its printing).
* Threshold calibration sweeps ~100 thresholds; each point is the COCO AP of a *merged*
  prediction set (every image keeps either the saver's or the base's detections).
  pycocotools re-matches everything for each point (7.4 s for one COCOeval at 1k images
  on the 2-core CPU box used for ``bench/cost_growth.py``; a 100-point sweep would be ~12 min).

Here matching is done once per source (``MatchTable.build``) and a sweep point only masks
presorted rows and runs cumulative sums. (``coco_sweep.SweepTable`` goes further for threshold
sweeps: a compact, chunk-built table walked incrementally; calibration uses it.) Measured (same
box, ~10 GT and 100 detections per image, 2 sources): per-image AP of 5k images 0.49 s;
MatchTable.build 2.4 s and one sweep point 0.14 s at 5k images (0.03 s at 1k, 0.58 s at 20k).

Matching loops over detections in compiled code (``match_kernel``, numba) where installed;
``_match(..., compiled=False)`` is the vectorised numpy reference (tests compare both).

Semantics are those of pycocotools 2.0 ``COCOeval(iouType='bbox')`` with default parameters
and are tested against it (``tests/evaluation/test_coco_fast.py``): same IoU (crowd union =
detection area), same greedy matching (ignored ground truth sorted last, crowd regions may
match repeatedly, the ``break`` at the first ignored ground truth after a regular match,
ties to the later ground truth), per-image-and-category cut to ``max_dets`` after a stable
score sort, the same tie order of equal scores across images (image list order, then score
order within an image), 101-point interpolated precision and the same ``-1`` exclusions.

Conventions: boxes are COCO XYWH float64; ground-truth ``area`` is COCO's ``area`` field
(as pycocotools uses it for area ranges); detection area is ``w*h``. Pass images in ascending
image-id order to reproduce pycocotools' tie order exactly (``gt_from_coco`` does this).
No detections against existing ground truth score 0 (as COCOeval computes it); a metric is NaN
only where it is undefined (no ground truth in its area range). Evaluation follows the same rule
(``coco_evaluator.CheckedCOCOEvaluator``; detectron2's own reports NaN for no detections).
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence

import numpy as np


@functools.lru_cache(maxsize=None)
def compiled_module(name: str):
    """A module of compiled loops (numba, requirements.txt), imported on first use: numba adds
    ~110 MB of RSS that processes which never match (evaluator training) need not pay. None
    without numba: the numpy paths give the same results."""
    try:
        return importlib.import_module(name)
    except ImportError:  # pragma: no cover - numba is a dependency
        return None


def _match_kernel():
    return compiled_module("tinysaver_det.metrics.match_kernel")


# Same expressions as pycocotools.cocoeval.Params.setDetParams, so the floats are identical.
IOU_THRS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_RNGS = np.array([[0, 1e5**2], [0, 32**2], [32**2, 96**2], [96**2, 1e5**2]], dtype=np.float64)
# evaluateImg starts the best IoU at min(t, 1-1e-10): a detection matches when iou >= this.
_MATCH_THRS = np.array([min([t, 1 - 1e-10]) for t in IOU_THRS])
T, A = len(IOU_THRS), len(AREA_RNGS)


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------
def _boxes(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(-1, 4)


@dataclass
class ImageGT:
    """Ground truth of one image: XYWH boxes (G,4), category ids, iscrowd and COCO area (G,)."""

    boxes: np.ndarray
    category_ids: np.ndarray
    iscrowd: np.ndarray = None
    area: np.ndarray = None

    def __post_init__(self):
        self.boxes = _boxes(self.boxes)
        g = len(self.boxes)
        self.category_ids = np.asarray(self.category_ids, dtype=np.int64).reshape(g)
        self.iscrowd = (
            np.zeros(g, bool)
            if self.iscrowd is None
            else np.asarray(self.iscrowd).astype(bool).reshape(g)
        )
        # Without an explicit area fall back to w*h (COCO's area is the mask area when present).
        self.area = (
            self.boxes[:, 2] * self.boxes[:, 3]
            if self.area is None
            else np.asarray(self.area, dtype=np.float64).reshape(g)
        )


@dataclass
class ImageDets:
    """Detections of one image: XYWH boxes (D,4), scores (D,), dataset category ids (D,)."""

    boxes: np.ndarray
    scores: np.ndarray
    category_ids: np.ndarray

    def __post_init__(self):
        self.boxes = _boxes(self.boxes)
        d = len(self.boxes)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(d)
        self.category_ids = np.asarray(self.category_ids, dtype=np.int64).reshape(d)


def gt_from_coco(coco, img_ids: Optional[Sequence[int]] = None) -> List[ImageGT]:
    """ImageGT per image of a pycocotools COCO object (default: all images, ascending id).

    Annotations keep pycocotools' order (``imgToAnns``), which decides IoU ties.
    """
    img_ids = sorted(coco.getImgIds()) if img_ids is None else list(img_ids)
    out = []
    for i in img_ids:
        anns = coco.imgToAnns.get(i, [])
        out.append(
            ImageGT(
                boxes=[a["bbox"] for a in anns],
                category_ids=[a["category_id"] for a in anns],
                iscrowd=[bool(a.get("iscrowd", 0)) for a in anns],
                area=[a["area"] for a in anns],
            )
        )
    return out


# ----------------------------------------------------------------------------------------------
# matching (COCOeval.evaluateImg, all images, IoU thresholds and area ranges at once)
# ----------------------------------------------------------------------------------------------
class _FlatGT(NamedTuple):
    img: np.ndarray  # (G,) image index
    cat: np.ndarray  # (G,) category index (contiguous)
    boxes: np.ndarray  # (G,4)
    crowd: np.ndarray  # (G,) bool
    notig: np.ndarray  # (G,A) bool: counts as ground truth in area range a
    key: np.ndarray  # (G,) group key img*ncat+cat, sorted


class _Matches(NamedTuple):
    """Kept detections in (image, category, score desc) order with their COCO flags."""

    img: np.ndarray  # (N,)
    cat: np.ndarray  # (N,) category index
    score: np.ndarray  # (N,)
    rank: np.ndarray  # (N,) rank within its (image, category)
    tp: np.ndarray  # (N,T,A) bool: matched to a counted ground truth
    ig: np.ndarray  # (N,T,A) bool: dtIgnore


def _concat(parts, dtype, shape=()):
    return np.concatenate(parts).astype(dtype) if parts else np.zeros((0,) + shape, dtype)


def _cat_index(cats: np.ndarray, cat_ids: np.ndarray) -> np.ndarray:
    return np.searchsorted(cat_ids, cats)


def _flat_columns(x, names: Sequence[str], dtypes: Sequence, shapes: Sequence) -> tuple:
    """(rows per image, then each column concatenated) of a sequence of ImageGT / ImageDets, or
    of a flat container with the same fields and ``offsets`` (``evaluation.flat``)."""
    if hasattr(x, "offsets"):  # flat: already one array per field
        o = np.asarray(x.offsets)
        cols = [
            np.asarray(getattr(x, k)[o[0] : o[-1]]).astype(d, copy=False).reshape((-1,) + sh)
            for k, d, sh in zip(names, dtypes, shapes)
        ]
        return (np.diff(o), *cols)
    n = [len(getattr(i, names[0])) for i in x]
    cols = [_concat([getattr(i, k) for i in x], d, sh) for k, d, sh in zip(names, dtypes, shapes)]
    return (n, *cols)


def _flatten_gt(gts: Sequence[ImageGT], cat_ids: np.ndarray) -> _FlatGT:
    """Concatenate ground truth, sorted by (image, category) keeping annotation order. ``gts``:
    ImageGT per image or a flat container (``evaluation.flat.FlatGT``)."""
    n, cats, boxes, crowd, area = _flat_columns(
        gts,
        ("category_ids", "boxes", "iscrowd", "area"),
        (np.int64, np.float64, bool, np.float64),
        ((), (4,), (), ()),
    )
    img = np.repeat(np.arange(len(gts)), n)
    cat = _cat_index(cats, cat_ids)
    key = img * len(cat_ids) + cat
    o = np.argsort(key, kind="stable")
    boxes, crowd, area = boxes[o], crowd[o], area[o]
    out_rng = (area[:, None] < AREA_RNGS[:, 0]) | (area[:, None] > AREA_RNGS[:, 1])
    return _FlatGT(img[o], cat[o], boxes, crowd, ~(crowd[:, None] | out_rng), key[o])


def _pair_iou(d: np.ndarray, g: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """maskUtils.iou for box pairs, same float operations as pycocotools' bbIou."""
    w = np.minimum(d[:, 2] + d[:, 0], g[:, 2] + g[:, 0]) - np.maximum(d[:, 0], g[:, 0])
    h = np.minimum(d[:, 3] + d[:, 1], g[:, 3] + g[:, 1]) - np.maximum(d[:, 1], g[:, 1])
    i = w * h
    da = d[:, 2] * d[:, 3]
    u = np.where(crowd, da, da + g[:, 2] * g[:, 3] - i)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = i / u
    return np.where((w > 0) & (h > 0), iou, 0.0)


def _match(
    gt: _FlatGT,
    dets: Sequence[ImageDets],
    cat_ids: np.ndarray,
    max_dets: int,
    areas: Sequence[int] = range(A),
    compiled: bool = True,
    packed: bool = False,
) -> _Matches:
    """COCOeval.evaluateImg for every (image, category) of one detection source at once.

    Greedy matching is sequential in detection rank: ``match_kernel.greedy_match`` loops over
    the detections (compiled); the numpy path (``compiled=False``, also without numba) steps
    over rank (<= max_dets steps) and handles every image, category, IoU threshold and area
    range of that rank in one go. ``packed``: tp and ig as uint16 (N, A), bit t for IoU threshold
    t (``_pack_bits``), instead of bool (N, T, A).
    """
    areas = list(areas)
    ncat = len(cat_ids)
    kernel = _match_kernel() if compiled else None
    n, cat, score, boxes = _flat_columns(
        dets,
        ("category_ids", "scores", "boxes"),
        (np.int64, np.float64, np.float64),
        ((), (), (4,)),
    )
    img = np.repeat(np.arange(len(dets)), n)
    cat = _cat_index(cat, cat_ids)
    if kernel is not None and not np.isnan(score).any():  # one compiled loop (NaN: sorted below)
        keep, rank, img, tp, ig = kernel.match_source(
            np.r_[0, np.cumsum(n)],
            cat,
            -score,
            np.ascontiguousarray(boxes),
            ncat,
            max_dets,
            gt.key,
            gt.boxes,
            gt.crowd,
            gt.notig[:, areas],
            _MATCH_THRS,
            AREA_RNGS[areas],
        )
        if not packed:
            tp, ig = _unpack_bits(tp), _unpack_bits(ig)
        return _Matches(img, cat[keep], score[keep], rank, tp, ig)
    key = img * ncat + cat
    # Stable sort by score desc within (image, category) = pycocotools' mergesort; then cut.
    o = np.lexsort((-score, key))
    key, img, cat, score, boxes = key[o], img[o], cat[o], score[o], boxes[o]
    first = np.searchsorted(key, key, side="left")
    rank = np.arange(len(key)) - first
    keep = rank < max_dets
    key, img, cat, score, boxes, rank = (x[keep] for x in (key, img, cat, score, boxes, rank))
    N = len(key)

    # All (det, gt) pairs of the same image and category; only IoU >= 0.5 can ever match.
    g0 = np.searchsorted(gt.key, key, side="left")
    ng = np.searchsorted(gt.key, key, side="right") - g0
    p_det = np.repeat(np.arange(N), ng)
    p_gt = np.arange(len(p_det)) - np.repeat(np.cumsum(ng) - ng, ng) + np.repeat(g0, ng)
    p_iou = _pair_iou(boxes[p_det], gt.boxes[p_gt], gt.crowd[p_gt])
    cand = p_iou >= _MATCH_THRS.min()
    p_det, p_gt, p_iou = p_det[cand], p_gt[cand], p_iou[cand]
    darea = boxes[:, 2] * boxes[:, 3]
    rng = AREA_RNGS[areas]
    out = (darea[:, None] < rng[:, 0]) | (darea[:, None] > rng[:, 1])  # (N, A')
    if kernel is not None:  # pairs are in (detection, annotation) order
        pstart = np.searchsorted(p_det, np.arange(N + 1))
        tp, ig = kernel.greedy_match(
            pstart, p_gt, p_iou, gt.notig[:, areas], gt.crowd, _MATCH_THRS, out, len(gt.img)
        )
        if not packed:
            tp, ig = _unpack_bits(tp), _unpack_bits(ig)
        return _Matches(img, cat, score, rank, tp, ig)
    # Order pairs by (rank, det, iou, gt index): the max "key" below is pycocotools' choice.
    o = np.lexsort((p_gt, p_iou, p_det, rank[p_det]))
    p_det, p_gt, p_iou = p_det[o], p_gt[o], p_iou[o]
    if len(p_det):
        run_start = np.flatnonzero(np.r_[True, p_det[1:] != p_det[:-1]])
    else:
        run_start = np.zeros(0, int)
    run_len = np.diff(np.r_[run_start, len(p_det)])
    within = np.arange(len(p_det)) - np.repeat(run_start, run_len) + 1  # 1..k, later = better
    K = int(run_len.max()) + 1 if len(run_len) else 1
    notig = gt.notig[:, areas]  # (G, A')
    Aa = len(areas)

    matched = np.zeros((len(gt.img), T, Aa), bool)
    dtm = np.zeros((N, T, Aa), bool)
    mig = np.zeros((N, T, Aa), bool)
    run_rank = rank[p_det[run_start]]
    step_bounds = (
        np.flatnonzero(np.r_[True, run_rank[1:] != run_rank[:-1], True])
        if len(run_rank)
        else np.zeros(0, int)
    )
    thr = _MATCH_THRS[None, :, None]
    for s, e in zip(step_bounds[:-1], step_bounds[1:]):
        # runs s..e-1 share one rank: one detection per (image, category) -> no conflicts.
        ps, pe = run_start[s], (run_start[e] if e < len(run_start) else len(p_det))
        g = p_gt[ps:pe]
        ok = (p_iou[ps:pe, None, None] >= thr) & (~matched[g] | gt.crowd[g, None, None])
        # Tier first (a counted gt beats an ignored one: the ``break``), then IoU, then index.
        pkey = np.where(ok, within[ps:pe, None, None] + K * notig[g][:, None, :], 0)
        local = run_start[s:e] - ps
        best = np.maximum.reduceat(pkey, local, axis=0)
        win = ok & (pkey == np.repeat(best, run_len[s:e], axis=0))
        pi, ti, ai = np.nonzero(win)
        matched[g[pi], ti, ai] = True  # crowd gts too: harmless, they stay available
        d = p_det[run_start[s:e]]
        dtm[d] = best > 0
        mig[d] = (best > 0) & (best <= K)

    ig = mig | (~dtm & out[:, None, :])
    tp = dtm & ~mig
    if packed:
        tp, ig = _pack_bits(tp), _pack_bits(ig)
    return _Matches(img, cat, score, rank, tp, ig)


def _unpack_bits(x: np.ndarray) -> np.ndarray:
    """uint16 (N, A) -> bool (N, T, A): the inverse of ``_pack_bits``."""
    return (x[:, None, :] & (1 << np.arange(T, dtype=np.uint16))[None, :, None]) != 0


def _pack_bits(x: np.ndarray) -> np.ndarray:
    """Bool (N, T[, A]) -> uint16 (N[, A]) with bit t set where x[:, t] is."""
    p = np.packbits(x, axis=1, bitorder="little")  # (N, 2[, A]): bits 0-7, 8-15
    out = p[:, 0].astype(np.uint16)
    if p.shape[1] > 1:
        out |= p[:, 1].astype(np.uint16) << 8
    return out


def _category_ids(gts: Sequence[ImageGT], *dets_lists: Sequence[ImageDets]) -> np.ndarray:
    parts = [g.category_ids for g in gts] + [d.category_ids for ds in dets_lists for d in ds]
    return np.unique(_concat(parts, np.int64))


# ----------------------------------------------------------------------------------------------
# accumulation (COCOeval.accumulate)
# ----------------------------------------------------------------------------------------------
def _bucket_max(
    group: np.ndarray, ngroups: int, tp: np.ndarray, valid: np.ndarray, npig: np.ndarray
):
    """Best precision per (threshold, group, recall bucket), as runs ``(seg, bucket, value)``.

    Rows are detections already in accumulate's order, grouped contiguously by ``group``
    (nondecreasing). ``tp``/``valid`` (N,T): true positive / not ignored. Only true-positive rows
    matter: precision is highest at them and recall only moves there, so pycocotools'
    monotone-precision lookup at recall threshold r is the maximum over buckets >= r of the
    best precision whose recall reaches bucket b (exact: same float ops, no tricks).
    ``seg = t * ngroups + group``; runs are sorted by (seg, bucket).
    """
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    if not len(group):
        return empty
    nt = tp.shape[1]
    cumv = np.cumsum(valid, axis=0, dtype=np.int32)
    first = np.searchsorted(group, np.arange(ngroups), side="left")
    base = np.zeros((ngroups, nt), np.int32)
    has = first > 0
    base[has] = cumv[first[has] - 1]
    ti, ri = np.nonzero(np.ascontiguousarray(tp.T))  # ordered by threshold, then row
    if not len(ti):
        return empty
    gi = group[ri]
    seg = ti.astype(np.int64) * ngroups + gi
    seg_start = np.flatnonzero(np.r_[True, seg[1:] != seg[:-1]])
    seg_len = np.diff(np.r_[seg_start, len(seg)])
    k = (np.arange(len(seg)) - np.repeat(seg_start, seg_len) + 1).astype(np.float64)
    nv = (cumv[ri, ti] - base[gi, ti]).astype(np.float64)  # valid rows so far
    fp = nv - k
    rc = k / npig[gi]
    pr = k / (fp + k + np.spacing(1))  # same ops as pycocotools
    bucket = np.searchsorted(REC_THRS, rc, side="right") - 1  # last r with thr <= rc
    flat = seg * len(REC_THRS) + bucket
    run = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
    return seg[run], bucket[run], np.maximum.reduceat(pr, run)


def _precision(group, ngroups, tp, valid, npig) -> np.ndarray:
    """COCOeval precision (T, ngroups, 101) of rows (see ``_bucket_max``); -1 where npig == 0."""
    R = len(REC_THRS)
    q = np.zeros((tp.shape[1], ngroups, R))
    seg, bucket, val = _bucket_max(group, ngroups, tp, valid, npig)
    q.reshape(-1)[seg * R + bucket] = val
    q = np.maximum.accumulate(q[..., ::-1], axis=-1)[..., ::-1]  # monotone precision
    q[:, npig == 0, :] = -1
    return q


def _mean_precision(group, ngroups, tp, valid, npig) -> np.ndarray:
    """Mean of COCOeval precision over thresholds and recall points per group (sparse).

    Same values as ``_precision(...).mean(axis=(0, 2))`` without the dense (T, groups, 101)
    array (which would take GBs for per-image groups). -1 where npig == 0.
    """
    nt, R = tp.shape[1], len(REC_THRS)
    seg, bucket, val = _bucket_max(group, ngroups, tp, valid, npig)
    out = np.zeros(ngroups)
    if len(seg):
        # Segmented suffix maximum, exact: integer ranks of the values, offset per segment so
        # that a later segment can never win while scanning backwards.
        n = len(val)
        order = np.argsort(val, kind="stable")
        rank = np.empty(n, np.int64)
        rank[order] = np.arange(n)
        key = (seg.max() - seg) * n + rank
        suf = np.maximum.accumulate(key[::-1])[::-1]
        smax = val[order[suf % n]]
        # Each run covers recall points (previous bucket in its segment, bucket].
        new_seg = np.r_[True, seg[1:] != seg[:-1]]
        prev = np.where(new_seg, -1, np.r_[-1, bucket[:-1]])
        weights = (bucket - prev) * smax
        out = np.bincount(seg % ngroups, weights=weights, minlength=ngroups) / (nt * R)
    out[npig == 0] = -1
    return out


def _mean_defined(x: np.ndarray) -> float:
    x = x[x > -1]
    return float(np.mean(x)) if x.size else float("nan")


def _per_image_from_matches(
    m: _Matches, gt: _FlatGT, n_img: int, ncat: int, no_gt_value: float, area: int = 0
) -> np.ndarray:
    """Single-image COCO AP (area ``all``, maxDets 100) of every image from matches."""
    # Only (image, category) groups with counted gt enter the mean: compress to those.
    npig_all = np.bincount(gt.key, weights=gt.notig[:, area], minlength=n_img * ncat)
    groups = np.flatnonzero(npig_all > 0)
    key = m.img * ncat + m.cat
    pos = np.searchsorted(groups, key)
    if len(groups):
        keep = (pos < len(groups)) & (groups[np.minimum(pos, len(groups) - 1)] == key)
    else:
        keep = np.zeros(len(key), bool)
    per_group = _mean_precision(
        pos[keep], len(groups), m.tp[keep, :, area], ~m.ig[keep, :, area], npig_all[groups]
    )
    g_img = groups // ncat
    s = np.bincount(g_img, weights=per_group, minlength=n_img)
    cnt = np.bincount(g_img, minlength=n_img)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, s / np.maximum(cnt, 1), no_gt_value)


def per_image_ap_batch(
    gts: Sequence[ImageGT],
    dets_list: Sequence[ImageDets],
    *,
    max_dets: int = 100,
    no_gt_value: float = 1.0,
) -> np.ndarray:
    """``per_image_ap`` of many images at once (float64 array, len(gts)). Vectorised."""
    assert len(gts) == len(dets_list)
    cat_ids = _category_ids(gts, dets_list)
    fg = _flatten_gt(gts, cat_ids)
    m = _match(fg, dets_list, cat_ids, max_dets, areas=[0])
    return _per_image_from_matches(m, fg, len(gts), len(cat_ids), no_gt_value)


def per_image_ap(
    gt: ImageGT, dets: ImageDets, *, max_dets: int = 100, no_gt_value: float = 1.0
) -> float:
    """COCO AP@[.50:.95] of one image (= COCOeval stats[0] on a one-image dataset).

    101-point interpolated precision, maxDets 100, area 'all', averaged over the categories
    with at least one non-crowd ground truth in the image. Edge cases:

    * no non-crowd ground truth (empty or crowd-only image) -> ``no_gt_value`` (default 1.0):
      there is nothing to find, so the base cannot improve recall; false positives are
      ignored for this proxy (COCOeval would report -1, i.e. undefined);
    * ground truth but no detections -> 0.0;
    * detections of categories absent from the image do not enter the mean (as in COCO);
    * detections matched to crowd regions are ignored (neither TP nor FP), as in COCO.
    """
    return float(per_image_ap_batch([gt], [dets], max_dets=max_dets, no_gt_value=no_gt_value)[0])


# ----------------------------------------------------------------------------------------------
# dataset-level metrics of a per-image choice between sources
# ----------------------------------------------------------------------------------------------
def _metrics_from_precision(p: np.ndarray) -> Dict[str, float]:
    """COCOeval stats[:6] (x100, NaN if undefined) of precision (T, 101, K, A)."""
    return {
        "AP": 100 * _mean_defined(p[:, :, :, 0]),
        "AP50": 100 * _mean_defined(p[0, :, :, 0]),
        "AP75": 100 * _mean_defined(p[5, :, :, 0]),
        "APs": 100 * _mean_defined(p[:, :, :, 1]),
        "APm": 100 * _mean_defined(p[:, :, :, 2]),
        "APl": 100 * _mean_defined(p[:, :, :, 3]),
    }


@dataclass
class MatchTable:
    """Matches of several detection sources on the same images, for fast merged COCO metrics.

    ``build`` matches each source once. ``coco_metrics(choice)`` then gives COCOeval's box AP of
    the merged set where image i keeps all detections of source ``choice[i]``; rows are sorted
    once per category across all sources in accumulate's order (score desc, then image, then
    rank), so a choice only masks rows and runs cumulative sums.
    """

    sources: List[str]
    num_images: int
    cat_ids: np.ndarray
    npig: np.ndarray  # (ncat, A) counted gt per category and area
    rows_img: List[np.ndarray]  # per area: presorted rows not ignored everywhere
    rows_src: List[np.ndarray]
    rows_cat: List[np.ndarray]
    rows_tp: List[np.ndarray]  # per area: (n_a, T) bool
    rows_valid: List[np.ndarray]

    @classmethod
    def build(
        cls, gts: Sequence[ImageGT], sources: Mapping[str, Sequence[ImageDets]], max_dets: int = 100
    ) -> "MatchTable":
        """Match every source against ``gts`` (images in ascending image-id order)."""
        names = list(sources)
        for s in names:
            assert len(sources[s]) == len(gts), (
                f"source {s!r}: {len(sources[s])} != {len(gts)} images"
            )
        cat_ids = _category_ids(gts, *[sources[s] for s in names])
        ncat = len(cat_ids)
        fg = _flatten_gt(gts, cat_ids)
        npig = np.zeros((ncat, A), np.int64)
        np.add.at(npig, fg.cat, fg.notig.astype(np.int64))
        ms = [_match(fg, sources[s], cat_ids, max_dets) for s in names]
        src = np.concatenate([np.full(len(m.img), i, np.int64) for i, m in enumerate(ms)])
        cat = np.concatenate([m.cat for m in ms])
        img = np.concatenate([m.img for m in ms])
        score = np.concatenate([m.score for m in ms])
        rank = np.concatenate([m.rank for m in ms])
        tp = np.concatenate([m.tp for m in ms])
        ig = np.concatenate([m.ig for m in ms])
        # accumulate: per category, rows laid out by (image, rank), stable sort by score desc.
        # With one source per image kept, (image, source, rank) gives the same relative order.
        o = np.lexsort((rank, src, img, -score, cat))
        img, src, cat, tp, ig = img[o], src[o], cat[o], tp[o], ig[o]
        rows = dict(img=[], src=[], cat=[], tp=[], valid=[])
        for a in range(A):
            sel = np.flatnonzero(~ig[:, :, a].all(axis=1))  # rows ignored at every IoU never count
            rows["img"].append(img[sel])
            rows["src"].append(src[sel])
            rows["cat"].append(cat[sel])
            rows["tp"].append(np.ascontiguousarray(tp[sel, :, a]))
            rows["valid"].append(np.ascontiguousarray(~ig[sel, :, a]))
        return cls(
            names,
            len(gts),
            cat_ids,
            npig,
            rows["img"],
            rows["src"],
            rows["cat"],
            rows["tp"],
            rows["valid"],
        )

    def precision(self, choice) -> np.ndarray:
        """COCOeval's eval['precision'][..., maxDets=100] for a choice: (T, 101, K, A)."""
        choice = np.asarray(choice, dtype=np.int64).reshape(self.num_images)
        out = np.empty((T, len(REC_THRS), len(self.cat_ids), A))
        for a in range(A):
            keep = self.rows_src[a] == choice[self.rows_img[a]]
            q = _precision(
                self.rows_cat[a][keep],
                len(self.cat_ids),
                self.rows_tp[a][keep],
                self.rows_valid[a][keep],
                self.npig[:, a],
            )
            out[:, :, :, a] = q.transpose(0, 2, 1)
        return out

    def coco_metrics(self, choice) -> Dict[str, float]:
        """AP, AP50, AP75, APs, APm, APl (x100, NaN if undefined) of the merged detections."""
        return _metrics_from_precision(self.precision(choice))

    def source_metrics(self, source: str) -> Dict[str, float]:
        """Metrics of one source alone (every image takes it)."""
        return self.coco_metrics(np.full(self.num_images, self.sources.index(source)))
