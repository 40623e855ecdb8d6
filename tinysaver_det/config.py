"""
The one place where tinysaver_det's config keys are defined (all under MODEL.TINYSAVER), and the
one loader every entry point uses.

Paths: one rule. `load_config` makes every path a config holds absolute (see PATH_KEYS), so a
config written back out (OUTPUT_DIR/config.yaml, config_calibrated.yaml) means the same from any
working directory. A relative SAVER/BASE.CONFIG_FILE in a file resolves against the folder of the
file that names it (like _BASE_); every other relative path, and any path given on the command
line, resolves against the working directory (as in detectron2). URLs (detectron2://...) are kept.
"""

import logging
import math
import os
from typing import Dict, Optional, Sequence

import torch
import yaml

from detectron2.config import CfgNode as CN, get_cfg
from detectron2.utils.file_io import PathManager

from .calibration_result import CalibrationResult
from .data.datasets import register_coco_datasets

# The two detectors a TinySaver model holds, by their config sub-node names.
SUB_MODELS = ("SAVER", "BASE")
# Config keys that hold a file or folder path: load_config makes them absolute.
PATH_KEYS = (
    "OUTPUT_DIR",
    "MODEL.WEIGHTS",
    "MODEL.TINYSAVER.SAVER.CONFIG_FILE",
    "MODEL.TINYSAVER.SAVER.WEIGHTS",
    "MODEL.TINYSAVER.BASE.CONFIG_FILE",
    "MODEL.TINYSAVER.BASE.WEIGHTS",
    "MODEL.TINYSAVER.CALIBRATION_FILE",
    "MODEL.TINYSAVER.CACHE.DIR",
)
THRESHOLD_KEY = "MODEL.TINYSAVER.THRESHOLD"
# Spellings of infinity accepted on the command line for float keys (yacs reads them as strings).
INFINITIES = {
    "inf": math.inf,
    "+inf": math.inf,
    "-inf": -math.inf,
    "infinity": math.inf,
    "+infinity": math.inf,
    "-infinity": -math.inf,
}

logger = logging.getLogger(__name__)


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
    # What the head learns (evaluation/quality.py): "saver_ap" (per-image AP of the saver, the
    # paper's mAP proxy), "ap_gain" (per-image AP of the base minus the saver's; the score is then
    # minus the gain) or "marginal_ap" (the change of the split's AP when the image exits, times
    # the number of images: what routing is judged on; its caches run the base too).
    ts.EVALUATOR.TARGET = "saver_ap"
    # Width of the MLP's hidden layers and how many hidden layers it has.
    ts.EVALUATOR.HIDDEN_DIM = 128
    ts.EVALUATOR.NUM_LAYERS = 2
    ts.EVALUATOR.DROPOUT = 0.1
    # How many of the saver's top detection scores, sorted, the head sees.
    ts.EVALUATOR.TOP_K = 20
    # Weight of the pairwise ranking loss next to the regression loss (routing only needs the
    # order).
    ts.EVALUATOR.RANK_LOSS_WEIGHT = 1.0
    # Pairs whose targets differ by at most this much are left out of the ranking loss (their order
    # is within the target's noise).
    ts.EVALUATOR.RANK_MARGIN = 0.0

    # The routing rule: "evaluator" (default), "confidence" (the saver's top detection score: the
    # paper's rule for classification), "random" (the floor) or "oracle" (true per-image quality;
    # needs ground truth, analysis only).
    ts.ROUTER = "evaluator"
    # Images whose score is >= THRESHOLD exit with the saver's detections; the rest go to the base.
    # Changeable on a built model (`model.threshold = t`). -inf: everything exits; inf: nothing does
    # (both accepted on the command line).
    ts.THRESHOLD = 0.5
    # If set, a calibration json (written by tools/calibrate.py) whose chosen threshold load_config
    # puts into THRESHOLD; a THRESHOLD given on the command line wins over it (with a warning).
    ts.CALIBRATION_FILE = ""
    # Seed of the random router.
    ts.RANDOM_SEED = 0

    # The RegNet of the registered backbone `build_regnet_fpn_backbone` (modeling/backbone.py), in
    # the parameters of :paper:`dds`. Defaults: RegNetX-200MF, a light backbone for savers.
    ts.REGNET = CN()
    ts.REGNET.STEM_WIDTH = 32
    ts.REGNET.DEPTH = 13
    ts.REGNET.W_A = 36.44
    ts.REGNET.W_0 = 24
    ts.REGNET.W_M = 2.49
    ts.REGNET.GROUP_WIDTH = 8
    ts.REGNET.SE_RATIO = 0.0
    # "BN": trainable batch norm, for training from scratch ("FrozenBN" for pretrained weights).
    ts.REGNET.NORM = "BN"
    # Stages fed to the FPN (strides 4, 8, 16, 32).
    ts.REGNET.OUT_FEATURES = ["s1", "s2", "s3", "s4"]

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
    # Folder of the caches ("" = $TINYSAVER_CACHE, else "cache" beside OUTPUT_DIR: runs whose output
    # folders share a parent share their caches; see default_cache_dir).
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
    # Dataset on which the evaluator's rank correlation is logged during training
    # ("" = CALIBRATION.DATASET).
    ts.CALIBRATION.HELD_OUT_DATASET = ""
    # Target: the largest allowed drop of COCO box AP (points) against the base ...
    ts.CALIBRATION.MAX_AP_DROP = 0.5
    # ... or, if > 0, a compute budget in GFLOPs per image (then MAX_AP_DROP is ignored).
    ts.CALIBRATION.GFLOPS_BUDGET = 0.0
    # Number of images on which GFLOPs per image of each sub-model are measured (at least 1).
    ts.CALIBRATION.FLOPS_IMAGES = 8
    # Resamples of the images for the bootstrap intervals of the reported figures and for the
    # upper bound of the AP drop on which an AP-drop target is checked.
    ts.CALIBRATION.BOOTSTRAP_SAMPLES = 200
    # Processes that share the resamples (each is single-threaded numpy; results do not depend on
    # it). 0: one per CPU core, at most 8.
    ts.CALIBRATION.BOOTSTRAP_WORKERS = 0
    # An AP-drop target must hold on this one-sided bootstrap upper confidence bound of the drop;
    # thresholds are walked from fewest exits up and the walk stops at the first that fails.
    ts.CALIBRATION.UCB_LEVEL = 0.9
    # Thresholds considered for an AP-drop target, at exit-rate steps of 1 / (NUM_CANDIDATES - 1);
    # each costs one sweep step per resample.
    ts.CALIBRATION.NUM_CANDIDATES = 21


def default_cache_dir(cfg: CN) -> str:
    """
    The cache folder when MODEL.TINYSAVER.CACHE.DIR is empty: $TINYSAVER_CACHE, else `cache` beside
    OUTPUT_DIR, so that the README's runs (output/coco/tinysaver, output/coco/calibration) build the
    calibration split's cache once. Sharing is safe: a cache built from other models is refused.
    """
    env = os.getenv("TINYSAVER_CACHE")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    return os.path.join(os.path.dirname(os.path.abspath(cfg.OUTPUT_DIR)), "cache")


def cache_root(cfg: CN) -> str:
    """MODEL.TINYSAVER.CACHE.DIR, or its default."""
    return cfg.MODEL.TINYSAVER.CACHE.DIR or default_cache_dir(cfg)


def check_threshold(threshold) -> float:
    """
    A threshold is any real number, including -inf (every finite score exits) and +inf (nothing
    exits). NaN, strings and None are refused: they would silently route everything or nothing.
    """
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(
            f"{THRESHOLD_KEY} must be a number (or -inf/inf), got {threshold!r}"
        ) from None
    if isinstance(threshold, bool) or math.isnan(value):
        raise ValueError(f"{THRESHOLD_KEY} must be a number (or -inf/inf), got {threshold!r}")
    return value


def read_calibrated_threshold(path: str) -> float:
    """The deployed threshold of a calibration.json written by tools/calibrate.py."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"MODEL.TINYSAVER.CALIBRATION_FILE {path!r} does not exist; run tools/calibrate.py"
        )
    return check_threshold(CalibrationResult.load(path).threshold)


def _sub_config_paths(config_file: str) -> Dict[str, str]:
    """
    The SAVER/BASE config files named along `config_file`'s _BASE_ chain, each made absolute against
    the directory of the file that names it (the last one set wins, as in the merge).
    """
    with PathManager.open(config_file, "r") as f:
        raw = yaml.safe_load(f) or {}
    here = os.path.dirname(os.path.abspath(config_file))
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
            # os.path.join keeps an absolute value as it is.
            found[part] = os.path.normpath(os.path.join(here, value))
    return found


def _get(cfg: CN, key: str):
    node = cfg
    for name in key.split("."):
        node = node[name]
    return node


def _set(cfg: CN, key: str, value) -> None:
    *parents, last = key.split(".")
    node = cfg
    for name in parents:
        node = node[name]
    node[last] = value


def absolute_path(path: str) -> str:
    """A local path made absolute against the working directory; "" and URLs (x://...) unchanged."""
    if not path or "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))


def make_paths_absolute(cfg: CN) -> None:
    """Every key of PATH_KEYS made absolute against the working directory, in place."""
    for key in PATH_KEYS:
        try:
            value = _get(cfg, key)
        except KeyError:
            continue  # a config without the TinySaver keys
        _set(cfg, key, absolute_path(value))


def _parse_infinities(cfg: CN, opts: Sequence) -> list:
    """
    Command-line overrides with "inf", "-inf" (...) turned into floats for float keys: yacs reads
    them as strings and would refuse them as a type mismatch.
    """
    opts = list(opts)
    for i in range(0, len(opts) - 1, 2):
        value = opts[i + 1]
        if isinstance(value, str) and value.strip().lower() in INFINITIES:
            try:
                is_float = isinstance(_get(cfg, opts[i]), float)
            except KeyError:
                continue  # yacs names the unknown key
            if is_float:
                opts[i + 1] = INFINITIES[value.strip().lower()]
    return opts


def resolve_threshold(cfg: CN, explicit: Optional[float] = None) -> None:
    """
    Put the calibration file's chosen threshold into MODEL.TINYSAVER.THRESHOLD, so that a model
    reads its threshold from the config alone. A threshold given explicitly (on the command line)
    wins over the calibration file; the choice is logged.
    """
    ts = cfg.MODEL.TINYSAVER
    if not ts.CALIBRATION_FILE:
        ts.THRESHOLD = check_threshold(ts.THRESHOLD)
        return
    calibrated = read_calibrated_threshold(ts.CALIBRATION_FILE)
    if explicit is not None:
        ts.THRESHOLD = check_threshold(explicit)
        logger.warning(
            f"{THRESHOLD_KEY} {ts.THRESHOLD} given on the command line wins over the threshold "
            f"{calibrated} chosen in MODEL.TINYSAVER.CALIBRATION_FILE {ts.CALIBRATION_FILE}"
        )
    else:
        ts.THRESHOLD = calibrated
        logger.info(
            f"{THRESHOLD_KEY} {calibrated}, from MODEL.TINYSAVER.CALIBRATION_FILE "
            f"{ts.CALIBRATION_FILE}"
        )


def check_values(cfg: CN) -> None:
    """Refuse values that would run and give wrong results, naming the key."""
    calibration = cfg.MODEL.TINYSAVER.CALIBRATION
    for key, least, meaning in (
        ("FLOPS_IMAGES", 1, "images on which GFLOPs are measured"),
        ("BOOTSTRAP_WORKERS", 0, "processes for bootstrap resamples; 0: one per CPU core"),
    ):
        value = calibration[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(
                f"MODEL.TINYSAVER.CALIBRATION.{key} must be an integer >= {least} ({meaning}), "
                f"got {value!r}"
            )


def check_sub_configs(cfg: CN) -> None:
    """A TinySaver config's saver and base config files exist (else an error naming the key)."""
    if cfg.MODEL.META_ARCHITECTURE == "TinySaverRCNN":
        for part in SUB_MODELS:
            _sub_config_file(cfg, part)


def load_config(
    config_file: str, opts: Sequence[str] = (), device_fallback: bool = True, resolve: bool = True
) -> CN:
    """
    Read a config file (with detectron2's _BASE_ inheritance) plus command-line style overrides into
    a fresh config with the TinySaver keys. With `resolve` (what a run needs): the datasets of
    DATA.COCO_DATASETS are registered, every path is made absolute (see the module docstring),
    CALIBRATION_FILE's threshold goes into THRESHOLD unless `opts` sets THRESHOLD, and values are
    checked. With `device_fallback`, a CUDA device on a
    machine without one becomes the CPU.
    """
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"Config file {config_file!r} does not exist")
    cfg = get_cfg()
    add_tinysaver_config(cfg)
    cfg.merge_from_file(config_file)
    for part, path in _sub_config_paths(config_file).items():
        cfg.MODEL.TINYSAVER[part].CONFIG_FILE = path
    opts = _parse_infinities(cfg, opts)
    cfg.merge_from_list(opts)
    if resolve:
        # Every entry point and every `launch` worker loads its config here: register its
        # datasets (a sub-config's are not: the run's own config names the data it uses).
        cfg.MODEL.TINYSAVER.DATA.COCO_DATASETS = register_coco_datasets(
            cfg.MODEL.TINYSAVER.DATA.COCO_DATASETS, key="MODEL.TINYSAVER.DATA.COCO_DATASETS"
        )
        make_paths_absolute(cfg)
        # The THRESHOLD merged from opts (the last one given there) is the explicit one.
        explicit = cfg.MODEL.TINYSAVER.THRESHOLD if THRESHOLD_KEY in opts[0::2] else None
        resolve_threshold(cfg, explicit)
        check_values(cfg)
    if device_fallback and cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        # detectron2 defaults to CUDA; run on the CPU where there is no GPU rather than fail.
        logger.warning("No CUDA device: MODEL.DEVICE %s -> cpu", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    return cfg


def _sub_config_file(cfg: CN, part: str) -> str:
    key = f"MODEL.TINYSAVER.{part}.CONFIG_FILE"
    path = cfg.MODEL.TINYSAVER[part].CONFIG_FILE
    if not path:
        raise ValueError(f"{key} is empty: name the {part.lower()}'s detectron2 config file")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{key} = {path!r} does not exist (relative paths in a config file resolve against "
            "that file's folder, on the command line against the working directory)"
        )
    return path


def load_sub_config(cfg: CN, part: str) -> CN:
    """The detectron2 config of the saver or base ("SAVER" or "BASE") a TinySaver config names."""
    key = f"MODEL.TINYSAVER.{part}.CONFIG_FILE"
    path = _sub_config_file(cfg, part)
    # Paths kept as written: the sub-config's content keys the output cache, from any directory.
    sub = load_config(path, device_fallback=False, resolve=False)  # the parent's device is used
    if sub.MODEL.META_ARCHITECTURE == "TinySaverRCNN":
        raise ValueError(
            f"{key} = {path!r} is itself a TinySaver config; name a plain detector's config"
        )
    # The parent decides device; weights are loaded by the checkpointer, never by build_model.
    sub.MODEL.DEVICE = cfg.MODEL.DEVICE
    sub.MODEL.WEIGHTS = ""
    sub.freeze()
    return sub
