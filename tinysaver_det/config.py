"""The one place where tinysaver_det's config keys are defined (all under MODEL.TINYSAVER)."""
import logging
import os
from typing import Dict, Sequence

import torch
import yaml

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg
from detectron2.utils.file_io import PathManager

from .data.datasets import register_coco_datasets

# The two detectors a TinySaver model holds, by their config sub-node names.
SUB_MODELS = ("SAVER", "BASE")


def add_tinysaver_config(cfg: CN) -> None:
    """
    Add the TinySaver keys to a detectron2 config, in place. Idempotent.
    Never touches detectron2's global defaults: call it on a `get_cfg()` copy.
    """
    if "TINYSAVER" in cfg.MODEL:
        return
    cfg.MODEL.TINYSAVER = CN()
    ts = cfg.MODEL.TINYSAVER

    # The saver: a small detector that runs on every image. CONFIG_FILE is a detectron2 config,
    # resolved relative to the config file that names it. WEIGHTS: its checkpoint (.pth or .pkl),
    # loaded by tinysaver_det's checkpointer into the `saver.` prefix ("" = leave as initialised).
    ts.SAVER = CN()
    ts.SAVER.CONFIG_FILE = ""
    ts.SAVER.WEIGHTS = ""
    # The base: the large detector (Cascade R-CNN) that runs only on routed images.
    ts.BASE = CN()
    ts.BASE.CONFIG_FILE = ""
    ts.BASE.WEIGHTS = ""

    # The evaluator: the learned head that scores the saver's detections on each image.
    ts.EVALUATOR = CN()
    # Name in EVALUATOR_HEAD_REGISTRY.
    ts.EVALUATOR.NAME = "DetectionQualityHead"
    # What the head learns: "saver_ap" (per-image AP of the saver, the paper's mAP proxy) or
    # "ap_gain" (per-image AP of the base minus the saver's; the score is then minus the gain).
    ts.EVALUATOR.TARGET = "saver_ap"
    # Width of the MLP's hidden layers and how many hidden layers it has.
    ts.EVALUATOR.HIDDEN_DIM = 128
    ts.EVALUATOR.NUM_LAYERS = 2
    ts.EVALUATOR.DROPOUT = 0.1
    # How many of the saver's top detection scores, sorted, the head sees.
    ts.EVALUATOR.TOP_K = 20
    # Weight of the pairwise ranking loss next to the regression loss (routing only needs the order).
    ts.EVALUATOR.RANK_LOSS_WEIGHT = 1.0

    # The routing rule: "evaluator" (default), "confidence" (the saver's top detection score: the
    # paper's rule for classification), "random" (the floor) or "oracle" (true per-image quality;
    # needs ground truth, analysis only).
    ts.ROUTER = "evaluator"
    # Images whose score is >= THRESHOLD exit with the saver's detections; the rest go to the base.
    # Changeable on a built model (`model.threshold = t`). -inf: everything exits; inf: nothing does.
    ts.THRESHOLD = 0.5
    # If set, a calibration json (written by tools/calibrate.py) whose chosen threshold overrides
    # THRESHOLD when the model is built.
    ts.CALIBRATION_FILE = ""
    # Seed of the random router.
    ts.RANDOM_SEED = 0

    # Input checks (tinysaver_det/data/checks.py): unreadable images fail the run with their list,
    # unless this is True, which skips them with a warning.
    ts.DATA = CN()
    ts.DATA.SKIP_BAD_IMAGES = False
    # COCO-format datasets to register when the config is loaded, so a dataset of one's own needs
    # no Python: a list of (name, json_file, image_root), as detectron2's register_coco_instances
    # takes them. ~ and $VARS expand ($TINYSAVER_SHARED_DATA and $DETECTRON2_DATASETS default as for
    # the built-in sets); relative paths resolve against the working directory. Registering an
    # entry again is a no-op; a name already taken by another dataset is refused.
    ts.DATA.COCO_DATASETS = []

    # Cached detector outputs used to train the evaluator and to calibrate.
    ts.CACHE = CN()
    # Folder of the caches ("" = OUTPUT_DIR/cache).
    ts.CACHE.DIR = ""
    # Augmented views cached per training image (view 0 is the plain image; the others are
    # random flips and rescales), so the evaluator trains with augmentation without re-running
    # the saver every iteration.
    ts.CACHE.TRAIN_VIEWS = 3
    # Images per cache chunk: the unit that is written atomically and skipped on resume.
    ts.CACHE.CHUNK_SIZE = 64

    # Threshold calibration (tools/calibrate.py).
    ts.CALIBRATION = CN()
    # Split on which thresholds are chosen (never used to train the evaluator).
    ts.CALIBRATION.DATASET = ""
    # Dataset on which the evaluator's rank correlation is logged during training ("" = CALIBRATION.DATASET).
    ts.CALIBRATION.HELD_OUT_DATASET = ""
    # Target: the largest allowed drop of COCO box AP (points) against the base ...
    ts.CALIBRATION.MAX_AP_DROP = 0.5
    # ... or, if > 0, a compute budget in GFLOPs per image (then MAX_AP_DROP is ignored).
    ts.CALIBRATION.GFLOPS_BUDGET = 0.0
    # Number of images on which GFLOPs per image of each sub-model are measured.
    ts.CALIBRATION.FLOPS_IMAGES = 8


def _sub_config_paths(config_file: str) -> Dict[str, str]:
    """
    The SAVER/BASE config files named along `config_file`'s _BASE_ chain, each made absolute against
    the directory of the file that names it (the last one set wins, as in the merge).
    """
    with PathManager.open(config_file, "r") as f:
        raw = yaml.safe_load(f) or {}
    here = os.path.dirname(config_file)
    found: Dict[str, str] = {}
    bases = raw.get("_BASE_") or []
    for base in [bases] if isinstance(bases, str) else bases:
        base = os.path.expanduser(base)
        found.update(_sub_config_paths(base if os.path.isabs(base) else os.path.join(here, base)))
    tinysaver = (raw.get("MODEL") or {}).get("TINYSAVER") or {}
    for part in SUB_MODELS:
        value = (tinysaver.get(part) or {}).get("CONFIG_FILE")
        if value:
            value = os.path.expanduser(value)
            found[part] = value if os.path.isabs(value) else os.path.normpath(os.path.join(here, value))
    return found


def load_config(config_file: str, opts: Sequence[str] = (), device_fallback: bool = True) -> CN:
    """
    Read a config file (with detectron2's _BASE_ inheritance) plus command-line style overrides into
    a fresh config with the TinySaver keys. Sub-config paths in files resolve relative to the file
    that names them; paths given in `opts` resolve relative to the working directory.
    With `device_fallback`, a CUDA device on a machine without one becomes the CPU.
    """
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"Config file {config_file!r} does not exist")
    cfg = get_cfg()
    add_tinysaver_config(cfg)
    cfg.merge_from_file(config_file)
    for part, path in _sub_config_paths(config_file).items():
        cfg.MODEL.TINYSAVER[part].CONFIG_FILE = path
    cfg.merge_from_list(list(opts))
    # Every entry point and every `launch` worker loads its config here: register its datasets.
    cfg.MODEL.TINYSAVER.DATA.COCO_DATASETS = register_coco_datasets(
        cfg.MODEL.TINYSAVER.DATA.COCO_DATASETS, key="MODEL.TINYSAVER.DATA.COCO_DATASETS"
    )
    if device_fallback and cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        # detectron2 defaults to CUDA; run on the CPU where there is no GPU rather than fail.
        logging.getLogger(__name__).warning("No CUDA device: MODEL.DEVICE %s -> cpu", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    return cfg


def load_sub_config(cfg: CN, part: str) -> CN:
    """The detectron2 config of the saver or the base ("SAVER" or "BASE") named in a TinySaver config."""
    key = f"MODEL.TINYSAVER.{part}.CONFIG_FILE"
    path = cfg.MODEL.TINYSAVER[part].CONFIG_FILE
    if not path:
        raise ValueError(f"{key} is empty: name the {part.lower()}'s detectron2 config file")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{key} = {path!r} does not exist (relative paths in a config file resolve against "
            "that file's folder, on the command line against the working directory)"
        )
    sub = load_config(path, device_fallback=False)  # the parent's device is used
    if sub.MODEL.META_ARCHITECTURE == "TinySaverRCNN":
        raise ValueError(f"{key} = {path!r} is itself a TinySaver config; name a plain detector's config")
    # The parent decides device; weights are loaded by the checkpointer, never by build_model.
    sub.MODEL.DEVICE = cfg.MODEL.DEVICE
    sub.MODEL.WEIGHTS = ""
    sub.freeze()
    return sub
