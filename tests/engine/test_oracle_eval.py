"""ROUTER oracle in evaluation (--eval-only): the test loader keeps each image's ground truth."""

import json
import os

import pytest
import torch
from conftest import UNTRAINED_ON_CPU

import tinysaver_det  # noqa: F401
from tinysaver_det.config import load_config
from tinysaver_det.data.checks import checked_dataset_dicts
from tinysaver_det.engine.trainer import Trainer
from tinysaver_det.evaluation.detections import (
    contiguous_to_dataset_id,
    detections_record,
    record_dets,
)
from tinysaver_det.evaluation.ground_truth import dataset_ground_truth
from tinysaver_det.metrics.coco_fast import per_image_ap

CONFIG = os.path.join(
    os.path.dirname(__file__), "..", "..", "configs", "Synthetic", "tinysaver_R18_cascade_R18.yaml"
)


@pytest.fixture(scope="module")
def dataset(synthetic_split):
    return synthetic_split("val", 4, "oracle")


def oracle_cfg(dataset, out, router="oracle"):
    return load_config(
        CONFIG,
        [
            *UNTRAINED_ON_CPU,
            "MODEL.TINYSAVER.ROUTER",
            router,
            "MODEL.TINYSAVER.THRESHOLD",
            "0.0",
            "OUTPUT_DIR",
            str(out),
            "DATASETS.TEST",
            f"('{dataset}',)",
            "DATALOADER.NUM_WORKERS",
            "0",
            "MODEL.TINYSAVER.CALIBRATION.FLOPS_IMAGES",
            "1",
        ],
    )


def test_test_loader_keeps_ground_truth_only_for_the_oracle(dataset, tmp_path):
    dicts = checked_dataset_dicts([dataset])
    batches = list(Trainer.build_test_loader(oracle_cfg(dataset, tmp_path), dataset))
    inputs = [x for b in batches for x in b]
    assert [len(x["instances"]) for x in inputs] == [len(d["annotations"]) for d in dicts]
    assert all(x["instances"].image_size == tuple(x["image"].shape[-2:]) for x in inputs)
    loader = Trainer.build_test_loader(oracle_cfg(dataset, tmp_path, "evaluator"), dataset)
    plain = [x for b in loader for x in b]
    assert all("instances" not in x for x in plain)
    # The same test-time resize with and without ground truth.
    assert [x["image"].shape for x in plain] == [x["image"].shape for x in inputs]


def test_eval_only_with_the_oracle_routes_by_true_gain(dataset, tmp_path):
    cfg = oracle_cfg(dataset, tmp_path)
    torch.manual_seed(0)
    model = Trainer.build_model(cfg).eval()
    results = Trainer.test(cfg, model)[dataset]  # what tools/train_net.py --eval-only runs
    assert results["routing"]["num_images"] == 4 and "bbox" in results
    with open(tmp_path / "inference" / dataset / "routing.json") as f:
        scores = {r["image_id"]: r["score"] for r in json.load(f)["images"]}
    # The oracle's score is minus the base's per-image AP gain over the saver, against the truth.
    dicts = checked_dataset_dicts([dataset])
    gts = dataset_ground_truth(dataset, dicts)
    to_id = contiguous_to_dataset_id(dataset)
    plain = Trainer.build_test_loader(oracle_cfg(dataset, tmp_path, "evaluator"), dataset).dataset
    for d, gt, x in zip(dicts, gts, plain):
        saver = model.run_saver([x])[0][0]["instances"]
        base = model.run_base([x])[0]["instances"]
        gain = per_image_ap(gt, record_dets(detections_record(base, to_id))) - per_image_ap(
            gt, record_dets(detections_record(saver, to_id))
        )
        assert scores[d["image_id"]] == pytest.approx(-gain, abs=1e-4)
