"""
The README's COCO recipe ("Using it with real COCO and model-zoo checkpoints", steps 1-5) run as
written, as subprocesses of the real tools, from a working directory other than the repo root, on
the shared real COCO subsets: coco128 to train on, the two id-parity halves of the 158-image val2017
subset to calibrate on and to report on. Only what a CPU test needs is overridden on the command
line (device, tiny inputs and iterations, fewer proposals, no unavailable pretrained weights); the
TinySaver config's saver and base sub-configs get the same tiny sizes through two small wrapper
configs that inherit the repo's ones. Skipped where the shared COCO folders are absent.
"""

import json
import math
import os
import subprocess
import sys

import pytest
import yaml
from conftest import TINY_INPUT

from tinysaver_det.data.datasets import default_shared_root

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
COCO_CONFIGS = os.path.join(REPO, "configs", "COCO-Detection")
SHARED = default_shared_root()
REQUIRED = [os.path.join(SHARED, name) for name in ("coco128", "coco_val2017_subset")]
pytestmark = pytest.mark.skipif(
    not all(os.path.isdir(p) for p in REQUIRED),
    reason=f"the shared COCO folders {REQUIRED} are absent",
)

TRAIN = "coco128_train2017"
CALIB = "coco_2017_val_subset158_calib"
EVAL = "coco_2017_val_subset158_eval"
TINY_SOLVER = [
    "SOLVER.MAX_ITER",
    "2",
    "SOLVER.IMS_PER_BATCH",
    "2",
    "SOLVER.STEPS",
    "()",
    "SOLVER.WARMUP_ITERS",
    "1",
    "DATALOADER.NUM_WORKERS",
    "0",
]
# Detector training (steps 1 and 2): coco128, no evaluation, no ImageNet weights (not available).
DETECTOR = [
    "MODEL.DEVICE",
    "cpu",
    "MODEL.WEIGHTS",
    "",
    "DATASETS.TRAIN",
    f"('{TRAIN}',)",
    "DATASETS.TEST",
    "()",
    *TINY_INPUT,
    *TINY_SOLVER,
]
FEW_PROPOSALS = [
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN",
    "200",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN",
    "100",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
    "64",
]
# The sub-configs the TinySaver model builds: the repo's, at the tiny test size.
WRAPPERS = {
    "saver": ("saver_retinanet_R_18_FPN_1x.yaml", {"RETINANET": {"TOPK_CANDIDATES_TEST": 100}}),
    "base": (
        "base_cascade_rcnn_R_50_FPN_3x.yaml",
        {"RPN": {"PRE_NMS_TOPK_TEST": 100, "POST_NMS_TOPK_TEST": 50}},
    ),
}


def wrapper_yaml(config: str, model: dict) -> str:
    return json.dumps(
        {  # JSON is YAML
            "_BASE_": os.path.join(COCO_CONFIGS, config),
            "MODEL": model,
            "INPUT": {"MIN_SIZE_TEST": 64, "MAX_SIZE_TEST": 96},
        },
        indent=1,
    )


def tinysaver_opts() -> list:
    """What every TinySaver step (3-4) overrides: the shared splits, tiny sizes, few iterations."""
    return [
        "MODEL.DEVICE",
        "cpu",
        "DATASETS.TRAIN",
        f"('{TRAIN}',)",
        "DATASETS.TEST",
        f"('{EVAL}',)",
        "MODEL.TINYSAVER.CALIBRATION.DATASET",
        CALIB,
        "MODEL.TINYSAVER.SAVER.CONFIG_FILE",
        "tiny/saver.yaml",
        "MODEL.TINYSAVER.BASE.CONFIG_FILE",
        "tiny/base.yaml",
        # Step 1's "or train it" branch: the trained base replaces the config's model-zoo URL, which
        # cannot be downloaded here (the evaluator's held-out cache and calibration run the base).
        "MODEL.TINYSAVER.BASE.WEIGHTS",
        "output/coco/base/model_final.pth",
        "MODEL.TINYSAVER.CACHE.TRAIN_VIEWS",
        "1",
        "MODEL.TINYSAVER.CALIBRATION.FLOPS_IMAGES",
        "1",
        "MODEL.TINYSAVER.CALIBRATION.BOOTSTRAP_SAMPLES",
        "5",
        *TINY_INPUT,
        *TINY_SOLVER,
    ]


def run_step(cwd, env, tool: str, config: str, *args) -> None:
    """One README command: sys.executable tools/<tool> --config-file <config> <args> in cwd."""
    cmd = [sys.executable, os.path.join(REPO, "tools", tool), "--config-file", config, *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )


def cache_state(folder) -> dict:
    """A cache's key and when each of its chunks was written (a recomputed chunk is rewritten)."""
    chunks = {p.name: p.stat().st_mtime_ns for p in folder.glob("chunk_*.npz")}
    return {"key": json.loads((folder / "manifest.json").read_text())["key"], "chunks": chunks}


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("coco_recipe")
    assert os.path.realpath(cwd) != os.path.realpath(REPO)
    (cwd / "tiny").mkdir()
    for part, (config, model) in WRAPPERS.items():
        (cwd / "tiny" / f"{part}.yaml").write_text(wrapper_yaml(config, model))
    env = dict(os.environ, TINYSAVER_SHARED_DATA=SHARED, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    env.pop("TINYSAVER_CACHE", None)  # the README's runs share output/coco/cache
    tinysaver = os.path.join(COCO_CONFIGS, "tinysaver_R18_cascade_R50.yaml")
    # 1. The base. 2. The saver. Randomly initialised: a small step guards against
    # non-finite losses.
    run_step(
        cwd,
        env,
        "train_net.py",
        os.path.join(COCO_CONFIGS, WRAPPERS["base"][0]),
        *DETECTOR,
        *FEW_PROPOSALS,
        "SOLVER.BASE_LR",
        "0.001",
        "OUTPUT_DIR",
        "output/coco/base",
    )
    run_step(
        cwd,
        env,
        "train_net.py",
        os.path.join(COCO_CONFIGS, WRAPPERS["saver"][0]),
        *DETECTOR,
        "SOLVER.BASE_LR",
        "0.001",
        "OUTPUT_DIR",
        "output/coco/saver",
    )
    # 3. The evaluator: the training cache, then the head.
    run_step(
        cwd,
        env,
        "cache_outputs.py",
        tinysaver,
        *tinysaver_opts(),
        "MODEL.TINYSAVER.SAVER.WEIGHTS",
        "output/coco/saver/model_final.pth",
        "OUTPUT_DIR",
        "output/coco/tinysaver",
    )
    run_step(
        cwd,
        env,
        "train_net.py",
        tinysaver,
        *tinysaver_opts(),
        "MODEL.TINYSAVER.SAVER.WEIGHTS",
        "output/coco/saver/model_final.pth",
        "OUTPUT_DIR",
        "output/coco/tinysaver",
    )
    calib_cache = cwd / "output/coco/cache" / f"{CALIB}_1views_base"
    built = cache_state(calib_cache)
    # 4. The threshold.
    run_step(
        cwd,
        env,
        "calibrate.py",
        tinysaver,
        *tinysaver_opts(),
        "MODEL.WEIGHTS",
        "output/coco/tinysaver/model_final.pth",
        "OUTPUT_DIR",
        "output/coco/calibration",
    )
    reused = cache_state(calib_cache)
    # 5. The routed model, from the config calibrate.py wrote (given relative to the cwd).
    run_step(
        cwd, env, "train_net.py", "output/coco/calibration/config_calibrated.yaml", "--eval-only"
    )
    return {"cwd": cwd, "calib_cache_after_step3": built, "calib_cache_after_step4": reused}


def read_json(path):
    with open(path) as f:
        return json.load(f)


def test_every_step_wrote_its_outputs_under_the_working_directory(recipe):
    cwd = recipe["cwd"]
    out = cwd / "output" / "coco"
    for part in ("base", "saver", "tinysaver"):
        assert (out / part / "model_final.pth").stat().st_size > 0
        # Relative OUTPUT_DIRs resolved against the test's working directory, not the repo root.
        saved = yaml.safe_load((out / part / "config.yaml").read_text())
        assert saved["OUTPUT_DIR"] == str(out / part)
    for name in ("calibration.json", "config_calibrated.yaml"):
        assert (out / "calibration" / name).is_file()


def test_the_calibration_split_cached_while_the_evaluator_trained_is_reused(recipe):
    # README step 4: both runs keep their caches in output/coco/cache, so calibrate.py does not
    # compute the calibration split's saver and base outputs again.
    built = recipe["calib_cache_after_step3"]
    assert built["chunks"] and built["key"]["dataset"] == CALIB and built["key"]["with_base"]
    assert recipe["calib_cache_after_step4"] == built
    training_cache = recipe["cwd"] / "output/coco/cache" / f"{TRAIN}_1views"
    assert json.loads((training_cache / "manifest.json").read_text())["complete"] is True


def test_the_deployed_config_names_the_calibration_and_its_own_eval_folder(recipe):
    out = recipe["cwd"] / "output" / "coco"
    calibration = read_json(out / "calibration" / "calibration.json")
    assert calibration["calibration_dataset"] == CALIB
    deployed = yaml.safe_load((out / "calibration" / "config_calibrated.yaml").read_text())
    ts = deployed["MODEL"]["TINYSAVER"]
    assert ts["CALIBRATION_FILE"] == str(out / "calibration" / "calibration.json")
    assert ts["THRESHOLD"] == calibration["deployed_point"]["threshold"]
    assert ts["BASE"]["WEIGHTS"] == str(out / "base" / "model_final.pth")
    assert ts["SAVER"]["WEIGHTS"] == str(out / "saver" / "model_final.pth")
    assert deployed["MODEL"]["WEIGHTS"] == str(out / "tinysaver" / "model_final.pth")
    assert deployed["OUTPUT_DIR"] == str(out / "calibration" / "eval")


def test_the_routed_eval_ran_on_the_eval_half_with_the_calibrated_threshold(recipe):
    out = recipe["cwd"] / "output" / "coco"
    eval_dir = out / "calibration" / "eval" / "inference"
    results = read_json(eval_dir / "results.json")
    assert list(results) == [EVAL]
    assert {"bbox", "routing"} <= set(results[EVAL])
    assert "AP" in results[EVAL]["bbox"]
    subset = read_json(
        os.path.join(SHARED, "coco_val2017_subset", "annotations", "instances_val2017.json")
    )
    odd_ids = sorted(im["id"] for im in subset["images"] if im["id"] % 2 == 1)
    images = read_json(eval_dir / EVAL / "routing.json")["images"]
    assert sorted(im["image_id"] for im in images) == odd_ids
    assert results[EVAL]["routing"]["num_images"] == len(odd_ids)
    # Untrained detectors have AP 0 on every path, so the calibration may pick an infinite
    # threshold; the default THRESHOLD (0.5) would route otherwise wherever a score is below it.
    threshold = read_json(out / "calibration" / "calibration.json")["deployed_point"]["threshold"]
    finite = [im for im in images if math.isfinite(im["score"])]
    assert finite
    assert all(im["exited"] == (im["score"] >= threshold) for im in finite)
    exit_rate = sum(im["exited"] for im in images) / len(images)
    assert results[EVAL]["routing"]["exit_rate"] == pytest.approx(exit_rate)
