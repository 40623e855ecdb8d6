"""coco_fast against pycocotools COCOeval (bbox): per-image matching, per-image AP, merged AP."""

import contextlib
import io
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tinysaver_det.metrics.coco_fast import (
    A,
    ImageDets,
    ImageGT,
    MatchTable,
    _category_ids,
    _flatten_gt,
    _match,
    gt_from_coco,
    per_image_ap,
    per_image_ap_batch,
)

KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


# ---------------------------------------------------------------- pycocotools reference helpers
def coco_gt(gts, cat_ids):
    """In-memory COCO ground truth; image i gets id i+1, annotations ids from 1."""
    anns, aid = [], 1
    for i, g in enumerate(gts):
        for b, c, cr, ar in zip(g.boxes, g.category_ids, g.iscrowd, g.area):
            anns.append(
                dict(
                    id=aid,
                    image_id=i + 1,
                    category_id=int(c),
                    bbox=[float(v) for v in b],
                    iscrowd=int(cr),
                    area=float(ar),
                )
            )
            aid += 1
    coco = COCO()
    coco.dataset = dict(
        images=[dict(id=i + 1, width=640, height=480) for i in range(len(gts))],
        categories=[dict(id=int(c), name=str(c)) for c in cat_ids],
        annotations=anns,
    )
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def results(dets_list):
    return [
        dict(image_id=i + 1, category_id=int(c), bbox=[float(v) for v in b], score=float(s))
        for i, d in enumerate(dets_list)
        for b, s, c in zip(d.boxes, d.scores, d.category_ids)
    ]


def cocoeval(gts, dets_list, cat_ids):
    """COCOeval stats[:6] (raw, -1 undefined) of dets_list on gts."""
    gt = coco_gt(gts, cat_ids)
    res = results(dets_list)
    with contextlib.redirect_stdout(io.StringIO()):
        if res:
            dt = gt.loadRes(res)
        else:  # loadRes cannot take an empty list
            dt = COCO()
            dt.dataset = dict(
                images=gt.dataset["images"], categories=gt.dataset["categories"], annotations=[]
            )
            dt.createIndex()
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats[:6]


def as_metrics(stats):
    return {k: (s * 100 if s >= 0 else float("nan")) for k, s in zip(KEYS, stats)}


def assert_metrics(got, want):
    for k in KEYS:
        if np.isnan(want[k]):
            assert np.isnan(got[k]), (k, got, want)
        else:
            assert got[k] == pytest.approx(want[k], abs=1e-6), (k, got, want)


# ---------------------------------------------------------------- random data
def random_image(rng, ncat=4, n_gt=None, n_fp=None, tie_scores=True):
    n_gt = rng.integers(0, 9) if n_gt is None else n_gt
    size = rng.choice([8.0, 20.0, 50.0, 80.0, 150.0, 250.0], n_gt) * rng.uniform(0.7, 1.3, n_gt)
    wh = np.stack([size, size * rng.uniform(0.5, 2.0, n_gt)], 1)
    xy = rng.uniform(0, 400, (n_gt, 2))
    gboxes = np.concatenate([xy, wh], 1)
    if n_gt > 2 and rng.random() < 0.3:  # duplicate gt -> exact IoU ties
        gboxes[1] = gboxes[0]
    gcat = rng.integers(1, ncat + 1, n_gt)
    crowd = rng.random(n_gt) < 0.15
    area = wh[:, 0] * wh[:, 1] * rng.uniform(0.5, 1.0, n_gt)  # mask-like area != w*h
    gt = ImageGT(gboxes, gcat, crowd, area)
    # detections: jittered copies of gt (some with the wrong class) plus random false positives
    reps = rng.integers(0, 4, n_gt)
    src = np.repeat(np.arange(n_gt), reps)
    jit = (
        rng.normal(0, 1, (len(src), 4))
        * rng.choice([0.02, 0.06, 0.15], (len(src), 1))
        * np.repeat(wh, reps, 0)[:, [0, 1, 0, 1]]
    )
    dboxes = gboxes[src] + jit
    dboxes[:, 2:] = np.abs(dboxes[:, 2:]) + 1
    dcat = np.where(rng.random(len(src)) < 0.9, gcat[src], rng.integers(1, ncat + 1, len(src)))
    n_fp = rng.integers(0, 6) if n_fp is None else n_fp
    fp = np.concatenate([rng.uniform(0, 400, (n_fp, 2)), rng.uniform(4, 200, (n_fp, 2))], 1)
    dboxes = np.concatenate([dboxes, fp])
    dcat = np.concatenate([dcat, rng.integers(1, ncat + 1, n_fp)])
    scores = rng.random(len(dboxes))
    if tie_scores:
        scores = np.round(scores, 1)  # many equal scores within and across images
    return gt, ImageDets(dboxes, scores, dcat)


def random_dataset(seed, n_img=30, ncat=4):
    rng = np.random.default_rng(seed)
    gts, a, b = [], [], []
    for _ in range(n_img):
        g, d1 = random_image(rng, ncat)
        _, d2 = random_image(rng, ncat)
        # second source: re-detect the same gt (different jitter) so both sources are plausible
        d2 = ImageDets(
            np.concatenate([d1.boxes + rng.normal(0, 2, d1.boxes.shape), d2.boxes[:3]]),
            np.concatenate([np.round(rng.random(len(d1.scores)), 1), d2.scores[:3]]),
            np.concatenate([d1.category_ids, d2.category_ids[:3]]),
        )
        gts.append(g)
        a.append(d1)
        b.append(d2)
    return gts, a, b, list(range(1, ncat + 1))


def merged(choice, sources):
    return [sources[c][i] for i, c in enumerate(choice)]


# ---------------------------------------------------------------- dataset-level metrics
def test_one_image_one_category():
    gt = ImageGT([[10, 10, 50, 50], [100, 100, 20, 30]], [1, 1], [0, 0], [2500, 600])
    d = ImageDets(
        [[12, 11, 50, 48], [100, 102, 20, 28], [300, 300, 40, 40]], [0.9, 0.8, 0.95], [1, 1, 1]
    )
    table = MatchTable.build([gt], {"saver": [d]})
    assert_metrics(table.coco_metrics([0]), as_metrics(cocoeval([gt], [d], [1])))


def test_several_categories_and_crowd():
    gt = ImageGT(
        [[10, 10, 50, 50], [0, 0, 300, 300], [200, 200, 120, 100], [40, 40, 10, 10]],
        [1, 1, 2, 3],
        [0, 1, 0, 0],
        [2400, 80000, 11000, 90],
    )
    d = ImageDets(
        [
            [12, 11, 50, 48],
            [50, 50, 60, 60],
            [60, 60, 40, 40],
            [205, 198, 118, 100],
            [41, 40, 10, 11],
            [400, 10, 30, 30],
        ],
        [0.9, 0.85, 0.85, 0.7, 0.6, 0.99],
        [1, 1, 1, 2, 3, 3],
    )
    table = MatchTable.build([gt], {"saver": [d]})
    assert_metrics(table.coco_metrics([0]), as_metrics(cocoeval([gt], [d], [1, 2, 3])))


@pytest.mark.parametrize("seed", range(6))
def test_random_merged_selection_matches_pycocotools(seed):
    gts, a, b, cats = random_dataset(seed)
    table = MatchTable.build(gts, {"saver": a, "base": b})
    rng = np.random.default_rng(100 + seed)
    for choice in (np.zeros(len(gts), int), np.ones(len(gts), int), rng.integers(0, 2, len(gts))):
        want = as_metrics(cocoeval(gts, merged(choice, [a, b]), cats))
        assert_metrics(table.coco_metrics(choice), want)


def test_max_dets_cut_per_category():
    rng = np.random.default_rng(7)
    g, _ = random_image(rng, ncat=2, n_gt=8)
    d = ImageDets(
        np.repeat(g.boxes, 30, 0) + rng.normal(0, 3, (240, 4)),
        np.round(rng.random(240), 2),
        np.repeat(g.category_ids, 30),
    )
    d.boxes[:, 2:] = np.abs(d.boxes[:, 2:]) + 1
    table = MatchTable.build([g, g], {"s": [d, d]})
    assert_metrics(table.coco_metrics([0, 0]), as_metrics(cocoeval([g, g], [d, d], [1, 2])))


def test_undefined_area_metric_is_nan():
    gt = ImageGT([[10, 10, 200, 200]], [1], [0], [40000])  # large only
    d = ImageDets([[10, 10, 200, 190]], [0.5], [1])
    m = MatchTable.build([gt], {"s": [d]}).coco_metrics([0])
    assert np.isnan(m["APs"]) and np.isnan(m["APm"]) and m["APl"] == pytest.approx(100.0)
    assert_metrics(m, as_metrics(cocoeval([gt], [d], [1])))


# ---------------------------------------------------------------- per-image AP
@pytest.mark.parametrize("seed", range(3))
def test_per_image_ap_matches_one_image_cocoeval(seed):
    gts, a, b, cats = random_dataset(seed, n_img=15)
    got = per_image_ap_batch(gts, a)
    for g, d, ap in zip(gts, a, got):
        ref = cocoeval([g], [d], cats)[0]
        if ref < 0:
            assert ap == 1.0
        else:
            assert ap == pytest.approx(ref, abs=1e-8)
        assert per_image_ap(g, d) == ap


def test_per_image_ap_no_gt_is_no_gt_value():
    d = ImageDets([[0, 0, 10, 10]], [0.9], [1])
    empty = ImageGT(np.zeros((0, 4)), [])
    assert per_image_ap(empty, d) == 1.0
    assert per_image_ap(empty, ImageDets(np.zeros((0, 4)), [], [])) == 1.0
    assert per_image_ap(empty, d, no_gt_value=0.5) == 0.5


def test_per_image_ap_crowd_only_is_no_gt_value():
    crowd = ImageGT([[0, 0, 100, 100]], [1], [1], [10000])
    dets = ImageDets([[0, 0, 10, 10], [200, 200, 5, 5]], [0.9, 0.3], [1, 1])
    assert per_image_ap(crowd, dets) == 1.0


def test_per_image_ap_gt_without_detections_is_zero():
    gt = ImageGT([[0, 0, 10, 10]], [1])
    assert per_image_ap(gt, ImageDets(np.zeros((0, 4)), [], [])) == 0.0
    assert cocoeval([gt], [ImageDets(np.zeros((0, 4)), [], [])], [1])[0] == 0.0


def test_per_image_ap_ignores_categories_absent_from_image():
    gt = ImageGT([[0, 0, 50, 50]], [1])
    d = ImageDets([[0, 0, 50, 50]], [0.9], [1])
    extra = ImageDets([[0, 0, 50, 50], [100, 100, 30, 30]], [0.9, 0.95], [1, 2])
    assert per_image_ap(gt, d) == pytest.approx(1.0)
    assert per_image_ap(gt, extra) == pytest.approx(1.0)  # category 2 has no gt: not in the mean
    assert cocoeval([gt], [extra], [1, 2])[0] == pytest.approx(1.0)


def test_per_image_ap_crowd_matches_are_ignored():
    gt = ImageGT([[0, 0, 50, 50], [100, 100, 200, 200]], [1, 1], [0, 1], [2500, 40000])
    inside_crowd = ImageDets(
        [[0, 0, 50, 50], [120, 120, 30, 30], [150, 150, 30, 30]], [0.9, 0.95, 0.99], [1, 1, 1]
    )
    assert per_image_ap(gt, inside_crowd) == pytest.approx(1.0)  # not false positives
    assert cocoeval([gt], [inside_crowd], [1])[0] == pytest.approx(1.0)


def test_per_image_ap_batch_speed_smoke():
    rng = np.random.default_rng(0)
    pairs = [random_image(rng, ncat=5, n_gt=10, n_fp=60, tie_scores=False) for _ in range(500)]
    ap = per_image_ap_batch([p[0] for p in pairs], [p[1] for p in pairs])
    assert ap.shape == (500,) and np.all((ap >= 0) & (ap <= 1))


# ---------------------------------------------------------------- matching of one image
def match_image(gt: ImageGT, dets: ImageDets, max_dets: int = 100):
    """
    coco_fast's matching of one image in COCOeval.evaluateImg's terms: the kept detections' scores,
    category ids, tp and ignore (D, 10 IoU thresholds, 4 areas), the categories and their counted
    ground truth (K, 4).
    """
    cat_ids = _category_ids([gt], [dets])
    fg = _flatten_gt([gt], cat_ids)
    m = _match(fg, [dets], cat_ids, max_dets)
    num_gt = np.zeros((len(cat_ids), A), np.int64)
    np.add.at(num_gt, fg.cat, fg.notig.astype(np.int64))
    return SimpleNamespace(
        scores=m.score,
        category_ids=cat_ids[m.cat],
        tp=m.tp,
        ignore=m.ig,
        categories=cat_ids,
        num_gt=num_gt,
    )


def test_matching_against_evaluate_img():
    rng = np.random.default_rng(3)
    g, d = random_image(rng, ncat=3, n_gt=8, n_fp=4)
    m = match_image(g, d)
    gt = coco_gt([g], [1, 2, 3])
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(results([d])), iouType="bbox")
        ev.evaluate()
    for e in ev.evalImgs:
        if e is None:
            continue
        a = [list(r) for r in ev.params.areaRng].index(list(e["aRng"]))
        sel = m.category_ids == e["category_id"]
        ig = e["dtIgnore"].astype(bool)
        np.testing.assert_array_equal(m.ignore[sel, :, a].T, ig)
        np.testing.assert_array_equal(m.tp[sel, :, a].T, (e["dtMatches"] > 0) & ~ig)
        np.testing.assert_array_equal(m.scores[sel], e["dtScores"])
        k = list(m.categories).index(e["category_id"])
        assert m.num_gt[k, a] == int((e["gtIgnore"] == 0).sum())


# ---------------------------------------------------------------- constructors
def test_gt_from_coco_roundtrip():
    gts, _, _, cats = random_dataset(1, n_img=5)
    gt = coco_gt(gts, cats)
    back = gt_from_coco(gt)
    for g0, g1 in zip(gts, back):
        np.testing.assert_allclose(g0.boxes, g1.boxes)
        np.testing.assert_array_equal(g0.iscrowd, g1.iscrowd)
        np.testing.assert_allclose(g0.area, g1.area)


# ---------------------------------------------------------------- properties
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n_img=st.integers(1, 8))
def test_property_choice_and_order_invariance(seed, n_img):
    gts, a, b, cats = random_dataset(seed, n_img=n_img, ncat=3)
    table = MatchTable.build(gts, {"saver": a, "base": b})
    saver_only = MatchTable.build(gts, {"saver": a})
    saver_everywhere = np.zeros(n_img, int)
    assert_metrics(table.coco_metrics(saver_everywhere), saver_only.coco_metrics(saver_everywhere))
    # Listing order within an image only matters for exact score ties: use distinct scores.
    rng = np.random.default_rng(seed)
    a_u = [
        ImageDets(
            d.boxes, rng.permutation(len(d.scores)) / (len(d.scores) + 1.0) + 0.01, d.category_ids
        )
        for d in a
    ]
    perm = [rng.permutation(len(d.scores)) for d in a_u]
    a_p = [ImageDets(d.boxes[p], d.scores[p], d.category_ids[p]) for d, p in zip(a_u, perm)]
    m0 = MatchTable.build(gts, {"s": a_u}).coco_metrics(np.zeros(n_img, int))
    m1 = MatchTable.build(gts, {"s": a_p}).coco_metrics(np.zeros(n_img, int))
    assert_metrics(m1, m0)
    np.testing.assert_array_equal(per_image_ap_batch(gts, a_u), per_image_ap_batch(gts, a_p))


# ---------------------------------------------------------------- compiled matching
@pytest.mark.parametrize("max_dets", [100, 2])
def test_compiled_matching_equals_the_numpy_matching(max_dets):
    """match_kernel (order, cut, candidate IoUs, greedy loop) gives the numpy path's matches bit
    for bit: ties of scores and IoUs, crowd, area ranges, the max_dets cut; packed and not."""
    for seed in range(40):
        gts, a, _, _ = random_dataset(seed, n_img=6)
        cat_ids = _category_ids(gts, a)
        fg = _flatten_gt(gts, cat_ids)
        for packed in (False, True):
            want = _match(fg, a, cat_ids, max_dets, compiled=False, packed=packed)
            got = _match(fg, a, cat_ids, max_dets, packed=packed)
            for name, x, y in zip(want._fields, got, want):
                assert x.dtype == y.dtype and np.array_equal(x, y), (seed, name)
        assert _match(fg, a, cat_ids, max_dets, areas=[0]).tp.shape[2] == 1
