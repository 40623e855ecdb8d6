"""Quality targets: the marginal effect of one image on the split's AP, against pycocotools."""

import numpy as np
import pytest
from test_coco_fast import as_metrics, cocoeval, merged, random_dataset

from tinysaver_det.evaluation.quality import marginal_targets, routing_quality


@pytest.mark.parametrize("seed", range(3))
def test_marginal_targets_are_scaled_one_image_swaps_in_pycocotools(seed):
    gts, saver, base, cats = random_dataset(700 + seed, n_img=10)
    got = marginal_targets(gts, saver, base)
    assert (got == marginal_targets(gts, saver, base, exact=True)).all()  # small: exact
    fast = marginal_targets(gts, saver, base, exact=False)
    base_ap = as_metrics(cocoeval(gts, base, cats))["AP"]
    for i in range(len(gts)):
        choice = np.ones(len(gts), int)
        choice[i] = 0
        swapped = as_metrics(cocoeval(gts, merged(choice, [saver, base]), cats))["AP"]
        # N x (AP points / 100): the scale of one image's own AP in [0, 1].
        assert got[i] == pytest.approx(len(gts) * (swapped - base_ap) / 100, abs=1e-9), i
        assert fast[i] <= got[i] + 1e-9  # the approximation never overstates an exit's effect
    assert np.abs(got).max() > 0


def test_exact_saver_costs_nothing_and_a_wrong_one_costs_in_proportion_to_its_boxes():
    """An image whose saver detections equal the base's has marginal 0; swapping in a saver that
    misses everything costs more on an image with more boxes (per-image AP would call both 0)."""
    from tinysaver_det.metrics.coco_fast import ImageDets, ImageGT

    gts, saver, base = [], [], []
    for i, k in enumerate([1, 1, 4, 4]):
        boxes = np.array([[10.0 + 50 * j, 10.0 + i, 30.0, 30.0] for j in range(k)])
        gts.append(ImageGT(boxes=boxes, category_ids=[1] * k))
        base.append(ImageDets(boxes=boxes, scores=np.linspace(0.9, 0.6, k), category_ids=[1] * k))
        wrong = i in (1, 3)
        saver.append(
            ImageDets(
                boxes=boxes + (300.0 if wrong else 0.0),
                scores=np.linspace(0.9, 0.6, k),
                category_ids=[1] * k,
            )
        )
    m = marginal_targets(gts, saver, base)
    assert m[0] == 0.0 and m[2] == 0.0
    assert m[3] < m[1] < 0


def test_routing_quality_orientation():
    saver_ap, base_ap, marginal = [0.2, 0.9], [0.8, 0.9], [-0.3, 0.0]
    assert list(routing_quality("saver_ap", saver_ap, base_ap)) == [0.2, 0.9]
    assert list(routing_quality("ap_gain", saver_ap, base_ap)) == pytest.approx([-0.6, 0.0])
    assert list(routing_quality("marginal_ap", saver_ap, base_ap, marginal)) == [-0.3, 0.0]
    with pytest.raises(ValueError, match="marginal effects"):
        routing_quality("marginal_ap", saver_ap, base_ap)
    with pytest.raises(ValueError, match="TARGET 'mAP'|TARGET"):
        routing_quality("mAP", saver_ap, base_ap)
