"""coco_sweep: the incremental threshold sweep equals MatchTable.coco_metrics and pycocotools."""

import math
import multiprocessing

import numpy as np
import pytest
from test_coco_fast import KEYS, as_metrics, assert_metrics, cocoeval, merged, random_dataset

from tinysaver_det.evaluation import sweep_kernels
from tinysaver_det.evaluation.calibration import sweep
from tinysaver_det.evaluation.coco_sweep import SweepTable, _group_parts, _State, exit_steps
from tinysaver_det.evaluation.flat import FlatDets, FlatGT
from tinysaver_det.metrics.coco_fast import ImageDets, ImageGT, MatchTable


def same(got, want):
    """Bit-identical metrics (NaN equals NaN)."""
    for k in KEYS:
        assert (got[k] == want[k]) or (math.isnan(got[k]) and math.isnan(want[k])), (k, got, want)


def thresholds_for(scores, rng):
    picks = list(rng.choice(scores[np.isfinite(scores)], 6)) if np.isfinite(scores).any() else []
    return [-math.inf, math.inf, 0.5, 0.5] + picks + list(rng.random(4))


@pytest.mark.parametrize("seed", range(8))
def test_sweep_equals_full_recomputation_on_random_cases(seed):
    gts, a, b, _ = random_dataset(seed, n_img=25 + 5 * seed)
    table = MatchTable.build(gts, {"saver": a, "base": b})
    rng = np.random.default_rng(seed)
    scores = np.round(rng.random(len(gts)), 1)  # ties: several images move in one step
    scores[rng.random(len(gts)) < 0.1] = np.nan  # never exit
    thr = thresholds_for(scores, rng)
    step, order = exit_steps(scores, thr)
    got = SweepTable.from_match_table(table).sweep_metrics(step, len(thr))
    for j, i in enumerate(order):
        exits = np.isfinite(scores) & (scores >= thr[i])
        same(got[j], table.coco_metrics(np.where(exits, 0, 1)))


@pytest.mark.parametrize("seed", range(3))
def test_chunked_build_equals_match_table(seed):
    gts, a, b, _ = random_dataset(50 + seed, n_img=40)
    table = MatchTable.build(gts, {"saver": a, "base": b})
    built = SweepTable.build(gts, a, b, chunk=7)  # chunks split images across the sort
    choice = np.random.default_rng(seed).integers(0, 2, len(gts))
    for c in (choice, np.zeros(len(gts), int), np.ones(len(gts), int)):
        same(built.coco_metrics(c), table.coco_metrics(c))


@pytest.mark.parametrize("seed", range(3))
def test_sweep_points_match_pycocotools(seed):
    gts, a, b, cats = random_dataset(200 + seed, n_img=20)
    table = MatchTable.build(gts, {"saver": a, "base": b})
    scores = np.random.default_rng(seed).random(len(gts))
    costs = {"saver_gflops": 0.2, "evaluator_gflops": 0.01, "base_gflops": 1.0}
    thr = [0.8, 0.3, 0.55]
    for point, t in zip(sweep(table, scores, costs, thresholds=thr), thr):
        choice = np.where(scores >= t, 0, 1)
        assert point["threshold"] == t and point["exit_rate"] == pytest.approx((scores >= t).mean())
        want = as_metrics(cocoeval(gts, merged(choice, [a, b]), cats))
        assert_metrics({k: point[k] for k in KEYS}, want)


def test_max_dets_cut_and_empty_images():
    g = ImageGT([[0, 0, 10, 10]], [1])
    many = ImageDets([[0, 0, 10, 10]] * 3, [0.9, 0.8, 0.7], [1, 1, 1])
    none = ImageDets(np.zeros((0, 4)), [], [])
    gts, a, b = [g, ImageGT(np.zeros((0, 4)), []), g], [many, none, none], [none, many, many]
    table = MatchTable.build(gts, {"s": a, "b": b}, max_dets=2)
    built = SweepTable.build(gts, a, b, max_dets=2, chunk=1)
    for choice in ([0, 0, 0], [1, 0, 1], [0, 1, 1]):
        same(built.coco_metrics(choice), table.coco_metrics(choice))


def test_exit_steps_follow_exit_mask():
    scores = np.array([0.1, 0.5, np.nan, np.inf, 0.5, -np.inf])
    thr = [0.5, -math.inf, math.inf, 0.2]
    step, order = exit_steps(scores, thr)
    assert [thr[i] for i in order] == [math.inf, 0.5, 0.2, -math.inf]
    for j, i in enumerate(order):
        assert ((step <= j) == (np.isfinite(scores) & (scores >= thr[i]))).all()


@pytest.mark.parametrize("seed", range(3))
def test_marginal_ap_equals_one_image_swaps_in_pycocotools(seed):
    gts, a, b, cats = random_dataset(300 + seed, n_img=12)
    table = SweepTable.build(gts, a, b)
    marginal = table.marginal_ap()  # small: exact by default
    assert (marginal == table.marginal_ap(exact=True)).all()
    fast, bound = table.marginal_ap_bound()
    base_ap = as_metrics(cocoeval(gts, b, cats))["AP"]
    for i in range(len(gts)):
        choice = np.ones(len(gts), int)
        choice[i] = 0
        swapped = as_metrics(cocoeval(gts, merged(choice, [a, b]), cats))["AP"]
        assert marginal[i] == pytest.approx(swapped - base_ap, abs=1e-9), i
        assert fast[i] - 1e-9 <= swapped - base_ap <= fast[i] + bound[i] + 1e-9, i
    # The same differences as full recomputations, and state is restored between images.
    mt = MatchTable.build(gts, {"saver": a, "base": b})
    ref = mt.coco_metrics(np.ones(len(gts), int))["AP"]
    some = [3, 0, 3]
    for i, got in zip(some, table.marginal_ap(some, exact=True)):
        choice = np.ones(len(gts), int)
        choice[i] = 0
        assert got == mt.coco_metrics(choice)["AP"] - ref
    assert np.abs(marginal).max() > 0  # a swap does move the AP in these cases


@pytest.mark.parametrize("seed", range(10))
def test_fast_marginal_ap_is_within_its_bound_of_the_exact_one(seed):
    """The near-linear marginal AP (coco_marginal) is a lower bound of the exact one, above it by
    at most the stated bound, on random cases (ties, crowd, partial IoU validity, empty images,
    categories without ground truth) of growing size; its error shrinks with the images."""
    gts, a, b, _ = random_dataset(400 + seed, n_img=15 + 10 * seed)
    table = SweepTable.build(gts, a, b, chunk=9)
    exact = table.marginal_ap(exact=True)
    some = np.random.default_rng(seed).permutation(len(gts))[:12]
    fast, bound = table.marginal_ap_bound(some)
    assert (bound >= 0).all()
    err = exact[some] - fast
    assert (err >= -1e-9).all() and (err <= bound + 1e-9).all(), (err, bound)
    assert (fast == table.marginal_ap(some, exact=False)).all()
    if seed == 9:  # 105 images: the approximation is already close on average
        assert np.abs(err).mean() <= 0.25 * np.abs(exact[some]).mean()


def test_fast_marginal_ap_is_exact_where_a_swap_moves_nothing():
    """Images whose saver detections equal the base's: value 0 and bound 0 (no offsets); an image
    whose saver only removes a true positive late in the order: inside its bound."""
    gts, a, b, _ = random_dataset(77, n_img=30)
    same_dets = [ImageDets(d.boxes, d.scores, d.category_ids) for d in b]
    table = SweepTable.build(gts, same_dets, b)
    fast, bound = table.marginal_ap_bound()
    assert (fast == 0).all() and (bound == 0).all()
    exact = SweepTable.build(gts, a, b).marginal_ap(exact=True)
    fast, bound = SweepTable.build(gts, a, b).marginal_ap_bound()
    assert (fast <= exact + 1e-9).all() and (exact <= fast + bound + 1e-9).all()


def test_source_metrics_of_a_sweep_table():
    gts, a, b, _ = random_dataset(7, n_img=10)
    mt = MatchTable.build(gts, {"saver": a, "base": b})
    st = SweepTable.from_match_table(mt)
    same(st.source_metrics("saver"), mt.source_metrics("saver"))
    same(st.source_metrics("base"), mt.source_metrics("base"))
    with pytest.raises(ValueError, match="'evaluator'"):
        st.source_metrics("evaluator")


def test_no_images():
    table = SweepTable.build([], [], [])
    m = table.coco_metrics(np.zeros(0, int))
    assert all(math.isnan(m[k]) for k in KEYS) and len(table.marginal_ap()) == 0
    assert [len(x) for x in table.marginal_ap_bound()] == [0, 0]


class FineBlocks(SweepTable):
    """Blocks of a few items, so that small cases have many blocks and the bounds prune some."""

    LEVELS = (4, 2, 1)
    PRUNE_ITEMS_PER_POINT = 0


class TwoLevels(SweepTable):
    LEVELS = (6, 3)
    PRUNE_ITEMS_PER_POINT = 0


@pytest.mark.parametrize("cls", [FineBlocks, TwoLevels, SweepTable])
@pytest.mark.parametrize("seed", range(5))
def test_block_bounds_give_the_full_pass_precision(cls, seed):
    """The pruned evaluation (only blocks whose bounds allow a maximum) equals one pass over every
    kept true positive and MatchTable.precision, bit for bit, along a random sweep. (SweepTable
    itself takes the full pass on cases this small.)"""
    assert cls is SweepTable or cls.build(*random_dataset(1, n_img=5)[:3])._prune
    gts, a, b, _ = random_dataset(400 + seed, n_img=60, ncat=3)  # many items per segment
    mt = MatchTable.build(gts, {"saver": a, "base": b})
    table = cls.build(gts, a, b, chunk=17)
    st = _State(table)
    choice = np.ones(len(gts), int)
    rng = np.random.default_rng(seed)
    for moved in np.array_split(rng.permutation(len(gts)), 6):
        st.swap(moved, to_saver=True)
        choice[moved] = 0
        got = table._precision(st)
        assert np.array_equal(got, table._precision_full(st.kept, st.fv))
        assert np.array_equal(got, mt.precision(choice))
        assert np.array_equal(table._precision(st, areas=1), got[..., :1])
    for moved in np.array_split(rng.permutation(len(gts)), 3):  # and back to the base
        st.swap(moved, to_saver=False)
        choice[moved] = 1
        assert np.array_equal(table._precision(st), mt.precision(choice))


def test_block_sizes_must_nest():
    class Bad(SweepTable):
        LEVELS = (6, 4)

    gts, a, b, _ = random_dataset(1, n_img=5)
    with pytest.raises(ValueError, match="LEVELS"):
        Bad.build(gts, a, b)


@pytest.mark.parametrize("compiled", [True, False])
def test_group_parts_is_a_stable_sort_by_key(compiled):
    rng = np.random.default_rng(0)
    keys = [rng.integers(0, 7, n).astype(np.int32) for n in (0, 5, 40, 13)]
    vals = [rng.random(len(k)) for k in keys]
    allk, allv = np.concatenate(keys), np.concatenate(vals)
    o = np.argsort(allk, kind="stable")
    off, (v, idx) = _group_parts(list(keys), 9, [list(vals)], index=True, compiled=compiled)
    assert np.array_equal(off, np.r_[0, np.cumsum(np.bincount(allk, minlength=9))])
    assert np.array_equal(v, allv[o]) and np.array_equal(idx, o)


class NumpySweep(SweepTable):
    """The numpy reference of the compiled build, swap and evaluation (sweep_kernels)."""

    COMPILED = False


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("levels", [(64, 8), (4, 2, 1), (6, 3), (5,)])
@pytest.mark.parametrize("seed", range(3))
def test_compiled_walk_equals_the_numpy_walk(levels, seed, threads):
    """The compiled build gives the numpy build's table; along a random walk there and back, the
    compiled swap leaves the numpy swap's state (kept bits, fv, block counts at every level) and
    the compiled evaluation gives the numpy one's precision, bit for bit, for every block layout
    (one level, two, three), in one thread and in two (each on a group of area ranges)."""
    gts, a, b, _ = random_dataset(500 + seed, n_img=50, ncat=3)
    fast = type(
        "Fast", (SweepTable,), dict(LEVELS=levels, PRUNE_ITEMS_PER_POINT=0, THREADS=threads)
    )
    slow = type("Slow", (NumpySweep,), dict(LEVELS=levels, PRUNE_ITEMS_PER_POINT=0))
    tf, ts = fast.build(gts, a, b, chunk=11), slow.build(gts, a, b, chunk=11)
    groups = tf._area_groups()
    assert len(groups) == threads and groups[0][0] == 0 and groups[-1][1] == 4  # A area ranges
    assert all(g[1] == h[0] for g, h in zip(groups, groups[1:]))
    for name in ("item_tp", "item_part", "item_qr", "item_base", "item_order", "fv_qs", "fv_w"):
        assert np.array_equal(getattr(tf, name), getattr(ts, name)), name  # numpy build too
    sf, ss = _State(tf), _State(ts)
    rng = np.random.default_rng(seed)
    moves = [(m, True) for m in np.array_split(rng.permutation(len(gts)), 5)]
    moves += [(m, False) for m in np.array_split(rng.permutation(len(gts)), 3)]
    base = np.ones(len(gts), bool)
    for moved, to_saver in moves:
        moved = moved[base[moved] == to_saver]  # images on the other source
        base[moved] = not to_saver
        sf.swap(moved, to_saver)
        ss.swap(moved, to_saver)
        assert np.array_equal(sf.flags, ss.flags) and np.array_equal(sf.fv, ss.fv)
        assert np.array_equal(sf._blk, ss._blk)
        got = tf._precision(sf)
        assert np.array_equal(got, ts._precision(ss))
        assert np.array_equal(got, tf._precision_numpy(sf))
        assert np.array_equal(got, tf._precision_full(sf.kept, sf.fv))
        assert np.array_equal(tf._precision(sf, areas=1), got[..., :1])


def _sweep_in_child(gts, a, b, step):
    return SweepTable.build(gts, a, b).sweep_metrics(step, 3)


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="needs fork (Linux/macOS)"
)
def test_two_thread_sweep_in_a_forked_child_after_the_parent_ran_one():
    """The threads of the parent's two-thread sweeps do not survive a fork; a forked child (as
    bootstrap workers are, though they use one thread) makes its own and gets the same metrics,
    without hanging on the parent's dead pool."""
    gts, a, b, _ = random_dataset(700, n_img=40)
    step = np.random.default_rng(0).integers(0, 4, len(gts))
    assert len(SweepTable.build(gts, a, b)._area_groups()) == 2  # the parent's pool exists
    want = SweepTable.build(gts, a, b).sweep_metrics(step, 3)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(_sweep_in_child, (gts, a, b, step)).get(timeout=120)
    assert got == want


def as_float32_scores(dets, rng):
    """The same detections with float32 scores (as a cache stores them): ties and +-0.0."""
    out = []
    for d in dets:
        s = np.round(rng.random(len(d.scores)), 1).astype(np.float32)
        s[rng.random(len(s)) < 0.1] = -0.0
        out.append(ImageDets(d.boxes, s.astype(np.float64), d.category_ids))
    return out


@pytest.mark.parametrize("seed", range(3))
def test_float32_scores_sorted_as_pycocotools_accumulate(seed):
    """Float32 scores take the compiled counting sort of build_streaming (sweep_kernels.
    accumulate_order); with many ties across images and sources and -0.0 == 0.0, every choice
    still gives MatchTable's metrics bit for bit and pycocotools' within its float tolerance."""
    rng = np.random.default_rng(seed)
    gts, a, b, cats = random_dataset(600 + seed, n_img=30)
    a, b = as_float32_scores(a, rng), as_float32_scores(b, rng)
    table = MatchTable.build(gts, {"saver": a, "base": b})
    built = SweepTable.build(gts, a, b, chunk=7)
    for c in (rng.integers(0, 2, len(gts)), np.zeros(len(gts), int), np.ones(len(gts), int)):
        same(built.coco_metrics(c), table.coco_metrics(c))
    choice = rng.integers(0, 2, len(gts))
    want = as_metrics(cocoeval(gts, merged(choice, [a, b]), cats))
    assert_metrics(built.coco_metrics(choice), want)


def test_accumulate_order_is_the_lexsort_of_accumulate():
    rng = np.random.default_rng(0)
    n_img, ncat, n = 40, 5, 3000
    img = np.sort(rng.integers(0, n_img, n)).astype(np.int32)
    src = rng.integers(0, 2, n).astype(np.int8)
    cat = rng.integers(0, ncat, n).astype(np.int16)
    o = np.lexsort((cat, src, img))  # per image and source, by category; rank within it
    img, src, cat = img[o], src[o], cat[o]
    key = (img.astype(np.int64) * 2 + src) * ncat + cat
    rank = np.arange(n) - np.searchsorted(key, key)
    score = np.round(rng.normal(size=n), 1).astype(np.float32)
    score[rng.random(n) < 0.05] = -0.0
    want = np.lexsort((rank, src, img, -score, cat))
    order = np.arange(n, dtype=np.int32)
    got = sweep_kernels.accumulate_order(img, src, cat, score.view(np.uint32), n_img, ncat, order)
    assert np.array_equal(got, want)


def test_flat_chunks_build_the_same_table():
    """build from flat containers (chunks read without an object per image) equals build from
    lists of images."""
    gts, a, b, _ = random_dataset(31, n_img=23)

    def flat_dets(ds):
        off = np.r_[0, np.cumsum([len(d.scores) for d in ds])]
        cols = [np.concatenate([getattr(d, k) for d in ds]) for k in ("boxes", "scores")]
        return FlatDets(*cols, np.concatenate([d.category_ids for d in ds]), off)

    off = np.r_[0, np.cumsum([len(g.category_ids) for g in gts])]
    cols = [np.concatenate([getattr(g, k) for g in gts]) for k in ("boxes", "category_ids")]
    crowd = np.concatenate([g.iscrowd for g in gts])
    flat_gt = FlatGT(*cols, crowd, np.concatenate([g.area for g in gts]), off)
    want = SweepTable.build(gts, a, b, chunk=6)
    got = SweepTable.build(flat_gt, flat_dets(a), flat_dets(b), chunk=6)
    for name in ("item_tp", "item_part", "item_qr", "item_order", "fv_qs", "fv_w", "q_end"):
        assert np.array_equal(getattr(got, name), getattr(want, name)), name
    choice = np.random.default_rng(0).integers(0, 2, len(gts))
    same(got.coco_metrics(choice), want.coco_metrics(choice))
