"""
Every dataset stage under detectron2's `launch` with two CPU processes (gloo) gives the results of
one process: the same cached targets, the same routing decisions and AP, the same chosen threshold;
and evaluator training runs under DDP with frozen saver and base.
"""
import json
import os
import socket
import uuid

import pytest
import torch

from detectron2.engine import launch

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "Synthetic", "tinysaver_R18_cascade_R18.yaml")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_stages(root: str, prefix: str, weights: dict, out_dir: str, result_file: str) -> None:
    """One process of the run: register the data, then cache, train, evaluate and calibrate."""
    torch.set_num_threads(1)
    import tinysaver_det  # noqa: F401
    from detectron2.modeling import build_model
    from detectron2.utils import comm
    from tinysaver_det.config import load_config
    from tinysaver_det.data.datasets import register_synthetic
    from tinysaver_det.engine.calibrate import calibrate
    from tinysaver_det.engine.output_cache import OutputCache
    from tinysaver_det.engine.trainer import Trainer, load_weights

    register_synthetic(root, prefix=prefix)
    cfg = load_config(CONFIG, [
        "MODEL.DEVICE", "cpu", "MODEL.TINYSAVER.SAVER.WEIGHTS", weights["saver"],
        "MODEL.TINYSAVER.BASE.WEIGHTS", weights["base"],
        "MODEL.TINYSAVER.CACHE.DIR", os.path.join(out_dir, "cache"), "MODEL.TINYSAVER.CACHE.CHUNK_SIZE", "2",
        "MODEL.TINYSAVER.CACHE.TRAIN_VIEWS", "2", "MODEL.TINYSAVER.CALIBRATION.DATASET", f"{prefix}_calib",
        "MODEL.TINYSAVER.CALIBRATION.FLOPS_IMAGES", "1", "MODEL.TINYSAVER.THRESHOLD", "0.0",
        "DATASETS.TRAIN", f"('{prefix}_train',)", "DATASETS.TEST", f"('{prefix}_val',)",
        "SOLVER.MAX_ITER", "6", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()",
        "TEST.EVAL_PERIOD", "3", "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", os.path.join(out_dir, "train"),
        "SEED", "3",
    ])
    torch.manual_seed(0)  # the evaluator head's initialisation: the same in every process and run
    model = build_model(cfg).eval()
    load_weights(model, cfg)
    records = OutputCache(cfg, f"{prefix}_train", views=2, model=model).load_or_build()

    trainer = Trainer(cfg)  # evaluator training under DDP (world size 2) with frozen saver and base
    trainer.resume_or_load(resume=False)
    trainer.train()
    trained = getattr(trainer.model, "module", trainer.model)

    # Training with 1 and 2 processes sees different batches, so compare evaluation and calibration
    # on one fixed model: any difference then comes from sharding and gathering.
    evaluation = Trainer.test(cfg, model)
    result = calibrate(cfg, model, dataset=f"{prefix}_calib", output_dir=os.path.join(out_dir, "calib"))
    if comm.is_main_process():
        with open(os.path.join(cfg.OUTPUT_DIR, "inference", f"{prefix}_val", "routing.json")) as f:
            per_image = json.load(f)["images"]
        with open(result_file, "w") as f:
            json.dump({
                "targets": [[r["image_id"], r["view"], r["saver_ap"]] for r in records],
                "summaries": [r["summary"].tolist() for r in records],
                "evaluation": evaluation,
                "per_image_routing": per_image,
                "threshold": result["chosen"]["threshold"],
                "evaluator_params_finite": all(torch.isfinite(p).all().item() for p in trained.evaluator.parameters()),
                "frozen_unchanged": all(torch.equal(a, b) for a, b in zip(trained.saver.state_dict().values(),
                                                                          model.saver.state_dict().values())),
            }, f)


def save_detector_weights(folder: str) -> dict:
    """Seeded saver and base checkpoints, so every process (and both runs) loads the same detectors."""
    import tinysaver_det  # noqa: F401
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model
    from tinysaver_det.config import load_config

    torch.manual_seed(0)
    model = build_model(load_config(CONFIG, ["MODEL.DEVICE", "cpu"]))
    paths = {}
    for part in ("saver", "base"):
        DetectionCheckpointer(getattr(model, part), folder).save(part)
        paths[part] = os.path.join(folder, f"{part}.pth")
    return paths


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from tinysaver_det.data.synthetic import generate_split, split_spec

    root = str(tmp_path_factory.mktemp("data"))
    for split, n in (("train", 4), ("calib", 4), ("val", 4)):
        generate_split(root, split, split_spec(split, 0.01), num_images=n, progress=False)
    prefix = f"dist{uuid.uuid4().hex[:6]}"
    weights = save_detector_weights(str(tmp_path_factory.mktemp("weights")))
    out = {}
    for world in (1, 2):
        folder = str(tmp_path_factory.mktemp(f"world{world}"))
        result_file = os.path.join(folder, "result.json")
        launch(run_stages, world, dist_url=f"tcp://127.0.0.1:{free_port()}", args=(root, prefix, weights, folder, result_file))
        with open(result_file) as f:
            out[world] = json.load(f)
    return out


def test_cache_is_the_same_with_two_processes(runs):
    assert runs[2]["targets"] == runs[1]["targets"]
    assert torch.allclose(torch.tensor(runs[2]["summaries"]), torch.tensor(runs[1]["summaries"]), atol=1e-5)


def test_evaluator_trains_under_ddp_with_frozen_detectors(runs):
    assert runs[2]["evaluator_params_finite"] and runs[2]["frozen_unchanged"]


def test_routed_evaluation_is_the_same_with_two_processes(runs):
    one, two = runs[1]["evaluation"], runs[2]["evaluation"]
    name = next(iter(one))
    assert two[name]["routing"]["num_images"] == one[name]["routing"]["num_images"] == 4
    for key in ("exit_rate", "gflops_per_image"):
        assert two[name]["routing"][key] == pytest.approx(one[name]["routing"][key])
    assert runs[2]["per_image_routing"] == runs[1]["per_image_routing"]  # same scores and decisions per image
    for key in ("AP", "AP50", "AP75"):
        assert two[name]["bbox"][key] == pytest.approx(one[name]["bbox"][key], nan_ok=True)


def test_calibration_is_the_same_with_two_processes(runs):
    assert runs[2]["threshold"] == runs[1]["threshold"]
