"""The routing rules as pure functions: which images exit, and merging both paths back in order."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from tinysaver_det.modeling.routing import (
    check_router,
    check_threshold,
    exit_mask,
    group_by_key,
    image_key,
    merge_in_order,
    split_exits,
    stable_uniform,
)

INF, NAN = float("inf"), float("nan")


def _mask(scores, threshold):
    return exit_mask(torch.tensor(scores, dtype=torch.float32), threshold).tolist()


# ------------------------------------------------------------------------------------ exit_mask
def test_exit_mask_at_and_above_threshold():
    assert _mask([0.1, 0.5, 0.9, 0.49999], 0.5) == [False, True, True, False]


def test_nan_and_inf_scores_never_exit():
    scores = [NAN, INF, -INF, 0.7]
    assert _mask(scores, 0.5) == [False, False, False, True]
    assert _mask(scores, -INF) == [False, False, False, True]
    assert _mask(scores, -1e30) == [False, False, False, True]


def test_threshold_minus_inf_exits_every_finite_score():
    assert _mask([-1e30, -3.0, 0.0, 5.0, 1e30], -INF) == [True] * 5


def test_threshold_inf_exits_nothing():
    assert _mask([-1e30, 0.0, 1e30, INF, NAN], INF) == [False] * 5


def test_exit_mask_accepts_numpy_and_lists():
    import numpy as np

    assert exit_mask(np.array([0.2, 0.8]), 0.5).tolist() == [False, True]
    assert exit_mask([0.2, 0.8], 0.5).tolist() == [False, True]
    assert exit_mask(torch.zeros(0), 0.5).tolist() == []


@pytest.mark.parametrize("bad", [NAN, None, "abc", True, False, [0.5], object()])
def test_check_threshold_refuses_non_numbers(bad):
    with pytest.raises(ValueError, match="MODEL.TINYSAVER.THRESHOLD"):
        check_threshold(bad)
    with pytest.raises(ValueError, match="MODEL.TINYSAVER.THRESHOLD"):
        exit_mask(torch.tensor([0.5]), bad)


@pytest.mark.parametrize(
    "good,value", [(0.3, 0.3), (1, 1.0), ("-inf", -INF), ("inf", INF), (-INF, -INF), ("0.25", 0.25)]
)
def test_check_threshold_accepts_numbers(good, value):
    assert check_threshold(good) == value


def test_check_router():
    for name in ("evaluator", "confidence", "random", "oracle"):
        assert check_router(name) == name
    with pytest.raises(ValueError, match="MODEL.TINYSAVER.ROUTER"):
        check_router("nope")


# ------------------------------------------------------------------------- merge and grouping
def test_merge_in_order():
    merged = merge_in_order([True, False, True, False], ["s0", "s1", "s2", "s3"], ["b1", "b3"])
    assert merged == ["s0", "b1", "s2", "b3"]
    assert merge_in_order([], [], []) == []
    assert merge_in_order([True, True], ["s0", "s1"], []) == ["s0", "s1"]
    assert merge_in_order(torch.tensor([False, False]), ["s0", "s1"], ["b0", "b1"]) == ["b0", "b1"]


def test_merge_in_order_refuses_wrong_counts():
    with pytest.raises(ValueError, match="base outputs"):
        merge_in_order([True, False], ["s0", "s1"], [])
    with pytest.raises(ValueError, match="base outputs"):
        merge_in_order([True, False], ["s0", "s1"], ["b1", "extra"])
    with pytest.raises(ValueError, match="saver outputs"):
        merge_in_order([True, False], ["s0"], ["b1"])


def test_group_by_key():
    assert group_by_key([(2, 3), (4, 5), (2, 3), (1, 1), (4, 5)]) == [[0, 2], [1, 4], [3]]
    assert group_by_key([]) == []
    assert group_by_key(["a"]) == [[0]]


def test_split_exits():
    assert split_exits(torch.tensor([True, False, False, True])) == ([0, 3], [1, 2])
    assert split_exits(torch.zeros(0, dtype=torch.bool)) == ([], [])


def test_stable_uniform():
    values = [stable_uniform(str(k), 0) for k in range(200)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert values == [stable_uniform(str(k), 0) for k in range(200)]  # fixed by (seed, key)
    assert values != [stable_uniform(str(k), 1) for k in range(200)]  # the seed matters
    assert len(set(values)) == 200
    assert 0.35 < sum(values) / len(values) < 0.65


def test_image_key():
    assert image_key({"image_id": 7, "file_name": "a.jpg"}, 3) == "7"
    assert image_key({"file_name": "a.jpg"}, 3) == "a.jpg"
    assert image_key({}, 3) == "#3"


# ------------------------------------------------------------------------ properties of routing
scores_st = st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=12)
threshold_st = st.one_of(
    st.floats(allow_nan=False, allow_infinity=True), st.sampled_from([-INF, INF, 0.0, 0.5])
)


def _route(scores, threshold):
    """What the model does: mask, split, run each path on its own images, merge back."""
    exited = exit_mask(torch.tensor(scores, dtype=torch.float32), threshold)
    exit_ids, routed_ids = split_exits(exited)
    saver_out = [("saver", i) for i in range(len(scores))]
    base_out = [("base", i) for i in routed_ids]
    merged = merge_in_order(exited.tolist(), saver_out, base_out)
    return exited.tolist(), exit_ids, routed_ids, merged


@settings(max_examples=300, deadline=None)
@given(scores_st, threshold_st)
def test_each_image_gets_exactly_its_own_saver_or_base_output(scores, threshold):
    exited, exit_ids, routed_ids, merged = _route(scores, threshold)
    assert len(merged) == len(scores)
    assert sorted(exit_ids + routed_ids) == list(range(len(scores)))
    assert not set(exit_ids) & set(routed_ids)
    for i, (s, e, out) in enumerate(zip(scores, exited, merged)):
        # The rule in exact arithmetic: a finite score at or above the threshold exits.
        assert e == (math.isfinite(s) and s >= threshold), (s, threshold)
        assert out == (("saver", i) if e else ("base", i))


@settings(max_examples=200, deadline=None)
@given(scores_st, threshold_st, st.randoms(use_true_random=False))
def test_decision_does_not_depend_on_batch_composition_or_order(scores, threshold, rnd):
    exited = _mask(scores, threshold)
    order = list(range(len(scores)))
    rnd.shuffle(order)
    permuted = _mask([scores[i] for i in order], threshold)
    assert [permuted[order.index(i)] for i in range(len(scores))] == exited
    # Alone, or in any sub-batch, an image gets the same decision.
    for i, s in enumerate(scores):
        assert _mask([s], threshold) == [exited[i]]
    k = rnd.randint(0, len(scores))
    assert _mask(scores[:k], threshold) == exited[:k]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.booleans(), max_size=20))
def test_merge_uses_every_output_once(exited):
    saver_out = [object() for _ in exited]
    base_out = [object() for e in exited if not e]
    merged = merge_in_order(exited, saver_out, base_out)
    assert [id(m) for m in merged if any(m is b for b in base_out)] == [id(b) for b in base_out]
    for i, e in enumerate(exited):
        assert (merged[i] is saver_out[i]) == e
    assert len({id(m) for m in merged}) == len(exited)
