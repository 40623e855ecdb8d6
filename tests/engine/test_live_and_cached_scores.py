"""
Every router scores an image the same live (TinySaverRCNN.inference) and from the output cache
(CachedSplit, what calibration chooses thresholds on): one score function per router, routing.py.
"""

import numpy as np
import torch

import tinysaver_det  # noqa: F401
from tinysaver_det.engine.calibrate import CachedSplit
from tinysaver_det.engine.trainer import Trainer, load_weights
from tinysaver_det.modeling.routing import ROUTERS, exit_mask


def test_live_and_cached_scores_agree_for_every_router(tmp_path, trained_detectors):
    td = trained_detectors
    dataset = f"{td.prefix}_val"
    cfg = td.tinysaver_config(
        tmp_path / "cache",
        "MODEL.TINYSAVER.RANDOM_SEED",
        "3",
        "OUTPUT_DIR",
        str(tmp_path / "out"),
        "MODEL.TINYSAVER.ROUTER",
        "oracle",  # the test loader then keeps the ground truth
    )
    torch.manual_seed(0)
    model = Trainer.build_model(cfg)
    load_weights(model, cfg)
    model.eval()
    split = CachedSplit.load(cfg, model, dataset)
    inputs = [x for batch in Trainer.build_test_loader(cfg, dataset) for x in batch]
    for router in ROUTERS:
        model.router = router
        with torch.no_grad():  # one image at a time, as the cache runs them (batched convolutions
            # round differently in the last bits)
            live = {x["image_id"]: model([x])[0]["tinysaver"]["score"] for x in inputs}
        cached = split.scores[router]
        live = np.array([live[r["image_id"]] for r in split.records])
        assert len(live) == len(cached) > 1
        if router in ("evaluator", "random"):
            np.testing.assert_array_equal(live, cached, err_msg=router)
        else:  # detections and AP recomputed from the cache's stored boxes
            np.testing.assert_allclose(live, cached, atol=1e-6, err_msg=router)
        assert np.ptp(cached) > 0, router  # scores that tell images apart
        # At a threshold chosen among the cached scores, every image takes the same path live.
        for t in cached:
            np.testing.assert_array_equal(
                exit_mask(torch.from_numpy(live), t).numpy(),
                exit_mask(torch.from_numpy(cached), t).numpy(),
                err_msg=f"{router} at {t}",
            )
