"""The evaluator head's parts, on hand-made inputs with hand-computed answers."""

import math

import pytest
import torch
import torch.nn.functional as F

from detectron2.structures import Boxes, Instances
from tinysaver_det.modeling.evaluator_head import (
    SCORE_LEVELS,
    DetectionQualityHead,
    detection_statistics,
    pairwise_rank_loss,
    pool_valid_region,
    statistics_dim,
)
from tinysaver_det.modeling.routing import exit_mask


def head(target: str) -> DetectionQualityHead:
    torch.manual_seed(0)
    return DetectionQualityHead(
        in_features=["p2"],
        in_channels=[2],
        in_strides=[4],
        num_classes=3,
        top_k=4,
        hidden_dim=8,
        num_layers=1,
        dropout=0.0,
        target=target,
    ).eval()


@pytest.mark.parametrize("target,sign", [("saver_ap", 1.0), ("ap_gain", -1.0)])
def test_scores_flip_the_sign_of_a_predicted_gain(target, sign):
    h = head(target)
    summary = torch.randn(5, h.summary_dim)
    with torch.no_grad():
        pred = h(summary)
        scores = h.scores(summary)
    torch.testing.assert_close(scores, sign * pred)


def test_ap_gain_routes_the_image_with_the_largest_predicted_gain():
    """Higher score = exit: the image where the base is predicted to gain most goes to the base."""
    h = head("ap_gain")
    with torch.no_grad():  # a head whose prediction is the summary's first entry
        h.input_norm.running_mean.zero_()
        h.input_norm.running_var.fill_(1.0 - h.input_norm.eps)
        first, last = h.mlp[0], h.mlp[-1]
        first.weight.zero_(), first.bias.zero_(), last.weight.zero_(), last.bias.zero_()
        first.weight[0, 0] = 1.0
        last.weight[0, 0] = 1.0
        summary = torch.zeros(3, h.summary_dim)
        summary[:, 0] = torch.tensor([0.05, 0.6, 0.2])  # predicted AP gain of the base
        scores = h.scores(summary)
    torch.testing.assert_close(scores, torch.tensor([-0.05, -0.6, -0.2]))
    assert exit_mask(scores, -0.3).tolist() == [True, False, True]


def test_pool_valid_region_ignores_the_padding():
    feature = torch.full((2, 2, 4, 6), 1000.0)  # padding: large values that must not leak in
    feature[0, :, :2, :3] = torch.arange(12.0).reshape(2, 2, 3)  # image 0: 8x12 px at stride 4
    feature[1, :, :3, :2] = -torch.arange(12.0).reshape(2, 3, 2)  # image 1: 9x5 px -> 3x2 cells
    out = pool_valid_region(feature, [(8, 12), (9, 5)], stride=4)
    assert out.shape == (2, 4)  # mean and max of 2 channels
    torch.testing.assert_close(out[0], torch.tensor([2.5, 8.5, 5.0, 11.0]))
    torch.testing.assert_close(out[1], torch.tensor([-2.5, -8.5, 0.0, -6.0]))
    # The same image alone (no padding) gives the same row.
    alone = pool_valid_region(feature[1:2, :, :3, :2].clone(), [(9, 5)], stride=4)
    torch.testing.assert_close(alone[0], out[1])


def instances(size, boxes, scores, classes):
    inst = Instances(size)
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.tensor(classes, dtype=torch.long)
    return inst


def test_detection_statistics_values():
    h, w = 100, 100
    boxes = [[0, 0, 40, 40], [0, 0, 40, 40], [50, 50, 52, 52]]
    inst = instances((h, w), boxes, [0.9, 0.35, 0.06], [0, 2, 2])
    stats = detection_statistics(inst, num_classes=3, top_k=4)
    assert stats.shape == (statistics_dim(3, 4),)
    top, rest = stats[:4], stats[4:]
    torch.testing.assert_close(top, torch.tensor([0.9, 0.35, 0.06, 0.0]))
    counts = rest[: len(SCORE_LEVELS)]
    expected_counts = [sum(s >= lvl for s in (0.9, 0.35, 0.06)) for lvl in SCORE_LEVELS]
    expected_counts = torch.tensor(expected_counts, dtype=torch.float32)
    torch.testing.assert_close(counts, torch.log1p(expected_counts))
    size_mix = rest[len(SCORE_LEVELS) : len(SCORE_LEVELS) + 4]
    # Relative sides 0.4 (large: > 0.3) twice and 0.02 (tiny: < 0.05), weighted by score.
    torch.testing.assert_close(size_mix, torch.tensor([0.06, 0.0, 0.0, 1.25]) / 1.31)
    per_class = rest[len(SCORE_LEVELS) + 4 : len(SCORE_LEVELS) + 7]
    torch.testing.assert_close(per_class, torch.tensor([0.9, 0.0, 0.35]))
    confusion = rest[len(SCORE_LEVELS) + 7 : len(SCORE_LEVELS) + 9]
    # The two confident boxes coincide (IoU 1) and have different classes.
    torch.testing.assert_close(confusion, torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(rest[-2:], torch.tensor([math.log(h), math.log(w)]))


def test_detection_statistics_of_no_detections():
    stats = detection_statistics(instances((30, 50), [], [], []), num_classes=3, top_k=4)
    torch.testing.assert_close(stats[:-2], torch.zeros(statistics_dim(3, 4) - 2))
    torch.testing.assert_close(stats[-2:], torch.tensor([math.log(30), math.log(50)]))


def test_pairwise_rank_loss_values():
    target = torch.tensor([0.2, 0.8, 0.2])
    # Only pairs whose targets differ count: (1, 0) and (1, 2), each softplus(-(pred_1 - pred_j)).
    pred = torch.tensor([0.0, 1.0, 3.0])
    expected = (F.softplus(torch.tensor(-1.0)) + F.softplus(torch.tensor(2.0))) / 2
    torch.testing.assert_close(pairwise_rank_loss(pred, target), expected)
    # The right order costs less than the wrong one.
    right = pairwise_rank_loss(torch.tensor([0.0, 2.0, 0.0]), target)
    wrong = pairwise_rank_loss(torch.tensor([2.0, 0.0, 2.0]), target)
    assert right < math.log(2) < wrong
    # Equal targets: no pair, a zero loss that still has a gradient.
    pred = torch.tensor([0.3, 0.1], requires_grad=True)
    loss = pairwise_rank_loss(pred, torch.tensor([0.5, 0.5]))
    loss.backward()
    assert loss.item() == 0.0 and pred.grad is not None


def test_pairwise_rank_loss_leaves_out_pairs_within_the_margin():
    target = torch.tensor([0.0, 0.05, 0.5])
    pred = torch.tensor([1.0, 0.0, 2.0])
    # Margin 0.1: the (0.05, 0.0) pair is noise and left out; (0.5, 0.0) and (0.5, 0.05) remain.
    expected = (F.softplus(torch.tensor(-1.0)) + F.softplus(torch.tensor(-2.0))) / 2
    torch.testing.assert_close(pairwise_rank_loss(pred, target, margin=0.1), expected)
    # Without a margin, the wrongly ordered near-tie counts too and raises the loss.
    assert pairwise_rank_loss(pred, target) > expected
