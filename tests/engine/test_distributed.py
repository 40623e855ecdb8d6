"""
Every dataset stage under detectron2's `launch` with two CPU processes (gloo) gives the results of
one process: the same cached targets, the same chosen threshold, the same routing decisions and
AP on each path; and evaluator training runs under DDP with frozen saver and base. The saver and
base are the session's trained detectors (tests/conftest.py), so targets and scores are not all
zero and the chosen threshold sends some images to each path.
"""

import json
import math
import os
import socket

import pytest
import torch
from conftest import QUICK_SCALE

from detectron2.engine import launch
from tinysaver_det.data.synthetic import split_spec

# The runs calibrate and evaluate on the calibration split of the session's quick data.
CALIB_IMAGES = split_spec("calib", QUICK_SCALE).num_images


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def state(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def run_stages(detectors, out_dir: str, result_file: str) -> None:
    """One process of the run: register the data, then cache, train, calibrate and evaluate."""
    torch.set_num_threads(1)
    import tinysaver_det  # noqa: F401
    from detectron2.modeling import build_model
    from detectron2.utils import comm
    from tinysaver_det.config import load_config, resolve_threshold
    from tinysaver_det.data.datasets import register_synthetic
    from tinysaver_det.engine.calibrate import calibrate
    from tinysaver_det.engine.output_cache import OutputCache
    from tinysaver_det.engine.trainer import Trainer, load_weights
    from tinysaver_det.flops import first_test_inputs, routed_gflops, tinysaver_costs

    prefix = detectors.prefix
    register_synthetic(detectors.root, prefix=prefix)
    calib = f"{prefix}_calib"
    cfg = load_config(
        detectors.configs["tinysaver"],
        [
            "MODEL.DEVICE",
            "cpu",
            "MODEL.TINYSAVER.SAVER.WEIGHTS",
            detectors.weights["saver"],
            "MODEL.TINYSAVER.BASE.WEIGHTS",
            detectors.weights["base"],
            "MODEL.TINYSAVER.CACHE.DIR",
            os.path.join(out_dir, "cache"),
            "MODEL.TINYSAVER.CACHE.CHUNK_SIZE",
            "2",
            "MODEL.TINYSAVER.CALIBRATION.DATASET",
            calib,
            # Evaluated on the calibration split: the routed model's COCO AP and exit rate must then
            # be what the calibration predicted from the cache at the chosen threshold.
            "DATASETS.TRAIN",
            f"('{prefix}_train',)",
            "DATASETS.TEST",
            f"('{calib}',)",
            "SOLVER.MAX_ITER",
            "6",
            "SOLVER.IMS_PER_BATCH",
            "4",
            "SOLVER.WARMUP_ITERS",
            "1",
            "SOLVER.STEPS",
            "()",
            "SOLVER.BASE_LR",
            "0.05",
            "TEST.EVAL_PERIOD",
            "3",
            "OUTPUT_DIR",
            os.path.join(out_dir, "train"),
            "SEED",
            "3",
        ],
    )
    torch.manual_seed(0)  # the evaluator head's initialisation: the same in every process and run
    model = build_model(cfg).eval()
    load_weights(model, cfg)
    records = OutputCache(cfg, f"{prefix}_train", views=2, model=model).load_or_build()

    trainer = Trainer(cfg)  # evaluator training under DDP (world size 2) with frozen saver and base
    trainer.resume_or_load(resume=False)
    trained = getattr(trainer.model, "module", trainer.model)
    before = {part: state(getattr(trained, part)) for part in ("evaluator", "saver", "base")}
    trainer.train()

    # Training with 1 and 2 processes sees different batches, so compare calibration and evaluation
    # on one fixed model: any difference then comes from sharding and gathering. A budget of half
    # the base's cost forces an operating point with images on both paths.
    flops_inputs = first_test_inputs(cfg, calib, cfg.MODEL.TINYSAVER.CALIBRATION.FLOPS_IMAGES)
    costs = tinysaver_costs(model, flops_inputs)
    result = calibrate(
        cfg,
        model,
        dataset=calib,
        gflops_budget=routed_gflops(costs, 0.5),
        output_dir=os.path.join(out_dir, "calib"),
    )
    cfg.defrost()
    cfg.MODEL.TINYSAVER.CALIBRATION_FILE = os.path.join(out_dir, "calib", "calibration.json")
    comm.synchronize()  # the main process writes calibration.json
    resolve_threshold(cfg)  # what load_config does with a calibration file
    evaluated = build_model(cfg).eval()  # built from the calibrated config, as --eval-only does
    evaluated.evaluator.load_state_dict(model.evaluator.state_dict())
    load_weights(evaluated, cfg)
    evaluation = Trainer.test(cfg, evaluated)
    if comm.is_main_process():
        with open(os.path.join(cfg.OUTPUT_DIR, "inference", calib, "routing.json")) as f:
            per_image = json.load(f)["images"]
        with open(result_file, "w") as f:
            json.dump(
                {
                    "targets": [[r["image_id"], r["view"], r["saver_ap"]] for r in records],
                    "summaries": [r["summary"].tolist() for r in records],
                    "evaluation": evaluation,
                    "per_image_routing": per_image,
                    "chosen": result.deployed_point,
                    "model_threshold": evaluated.threshold,
                    "evaluator_changed": not same_state(
                        state(trained.evaluator), before["evaluator"]
                    ),
                    "saver_unchanged": same_state(state(trained.saver), before["saver"])
                    and same_state(state(trained.saver), state(model.saver)),
                    "base_unchanged": same_state(state(trained.base), before["base"])
                    and same_state(state(trained.base), state(model.base)),
                },
                f,
            )


@pytest.fixture(scope="module")
def runs(tmp_path_factory, trained_detectors):
    out = {}
    for world in (1, 2):
        folder = str(tmp_path_factory.mktemp(f"world{world}"))
        result_file = os.path.join(folder, "result.json")
        launch(
            run_stages,
            world,
            dist_url=f"tcp://127.0.0.1:{free_port()}",
            args=(trained_detectors, folder, result_file),
        )
        with open(result_file) as f:
            out[world] = json.load(f)
    return out


def test_cache_is_the_same_with_two_processes(runs):
    targets = runs[1]["targets"]
    assert runs[2]["targets"] == targets
    assert len(targets) == 2 * 24  # 24 training images, 2 views each
    for view in (0, 1):  # trained detectors: targets that are not all zero, on both views
        assert any(ap > 0 for _, v, ap in targets if v == view)
    one, two = torch.tensor(runs[1]["summaries"]), torch.tensor(runs[2]["summaries"])
    assert torch.allclose(two, one, atol=1e-5)


@pytest.mark.parametrize("world", [1, 2])
def test_evaluator_trains_under_ddp_with_frozen_detectors(runs, world):
    assert runs[world]["evaluator_changed"]
    assert runs[world]["saver_unchanged"] and runs[world]["base_unchanged"]


def test_calibration_is_the_same_with_two_processes(runs):
    chosen = runs[1]["chosen"]
    assert math.isfinite(chosen["threshold"]) and 0.0 < chosen["exit_rate"] < 1.0
    assert runs[2]["chosen"] == chosen


@pytest.mark.parametrize("world", [1, 2])
def test_evaluation_uses_the_calibrated_threshold(runs, world):
    run = runs[world]
    assert run["model_threshold"] == run["chosen"]["threshold"]
    images = run["per_image_routing"]
    assert len(images) == CALIB_IMAGES
    assert all(im["exited"] == (im["score"] >= run["chosen"]["threshold"]) for im in images)
    routing = next(iter(run["evaluation"].values()))["routing"]
    # Evaluated on the calibration split: the exit rate is the one the calibration chose there.
    assert routing["exit_rate"] == pytest.approx(run["chosen"]["exit_rate"])
    assert 0.0 < routing["exit_rate"] < 1.0


def test_routed_evaluation_is_the_same_with_two_processes(runs):
    one, two = runs[1]["evaluation"], runs[2]["evaluation"]
    name = next(iter(one))
    assert two[name]["routing"]["num_images"] == one[name]["routing"]["num_images"] == CALIB_IMAGES
    # The same scores and decisions, image by image.
    assert runs[2]["per_image_routing"] == runs[1]["per_image_routing"]
    keys = [k for k in one[name]["routing"] if k.startswith("AP")]
    # Both paths were taken, so each path's AP is reported, and it is the same in both runs.
    assert {"AP_saver_images", "AP_base_images"} <= set(keys)
    for key in keys + ["exit_rate", "gflops_per_image"]:
        assert two[name]["routing"][key] == pytest.approx(one[name]["routing"][key], nan_ok=True)
    for key in ("AP", "AP50", "AP75"):
        assert two[name]["bbox"][key] == pytest.approx(one[name]["bbox"][key])
    assert one[name]["bbox"]["AP"] > 0


def test_routed_ap_is_what_the_calibration_predicted(runs):
    """COCOEvaluator on the routed model's outputs against the sweep's AP from cached outputs."""
    run = runs[1]
    bbox = next(iter(run["evaluation"].values()))["bbox"]
    for key in ("AP", "AP50", "AP75"):
        assert bbox[key] == pytest.approx(run["chosen"][key], abs=0.05)
