"""
Dataset registration. Importing this module registers:

* ``synthetic_<split>`` for every split in
  :data:`~tinysaver_det.data.synthetic.SYNTHETIC_SPLITS`
  (``synthetic_train``, ``synthetic_evaluator``, ``synthetic_calib``, ``synthetic_val``,
  ``synthetic_test``, ``synthetic_shifted``) under ``$DETECTRON2_DATASETS`` (default
  ``./datasets``). The files need not exist yet: ``datasets/prepare_synthetic.py`` generates them.
* ``coco_2017_val_subset158`` and ``coco128_train2017``: the small real-COCO sets in the shared
  data folder (``$TINYSAVER_SHARED_DATA``, default ``<repo root>/../shared/data``), registered only
  where their folder exists.
* ``coco_2017_val_calib`` / ``coco_2017_val_eval`` (and the same halves of the 158-image subset):
  val2017 split by image-id parity, to choose thresholds on one half and report on the other.

Any other COCO-format set is registered from the config (``MODEL.TINYSAVER.DATA.COCO_DATASETS``) by
:func:`register_coco_datasets`, which ``load_config`` calls in every process.

Full COCO (``coco_2017_train``, ``coco_2017_val``, ...) is already registered by detectron2 itself
from ``$DETECTRON2_DATASETS/coco`` when ``detectron2.data`` is imported; it is not re-registered
here.
"""

import json
import logging
import os
import re
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, register_coco_instances

from .synthetic import CATEGORIES, SYNTHETIC_SPLITS, split_paths

__all__ = [
    "SHARED_COCO_SETS",
    "default_shared_root",
    "register_synthetic",
    "register_shared_coco",
    "register_halves",
    "register_coco_datasets",
    "expand_data_path",
    "register_all",
    "image_difficulties",
]

logger = logging.getLogger(__name__)

# name -> (folder under the shared data root, json relative to it, image folder relative to it)
SHARED_COCO_SETS = {
    "coco_2017_val_subset158": (
        "coco_val2017_subset",
        "annotations/instances_val2017.json",
        "val2017",
    ),
    "coco128_train2017": ("coco128", "annotations/instances_train2017.json", "train2017"),
}


def synthetic_metadata() -> dict:
    """
    Metadata of the synthetic splits, known without their json, so evaluation and visualisation
    metadata work before generation. Must match what ``load_coco_json`` derives from the json.
    """
    return {
        "thing_classes": list(CATEGORIES),
        "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(CATEGORIES))},
    }


def _register_coco(name: str, metadata: dict, json_file: str, image_root: str) -> bool:
    # detectron2's catalogs raise on duplicate names, and this module may run more than once
    # (e.g. a reload); the first registration wins.
    if name in DatasetCatalog.list():
        logger.debug("Dataset %s is already registered; keeping the existing entry.", name)
        return False
    register_coco_instances(name, metadata, json_file, image_root)
    return True


def register_synthetic(root: str, prefix: str = "synthetic") -> List[str]:
    """
    Register every synthetic split as ``<prefix>_<split>`` (COCO json under ``root``).

    Args:
        root: data root holding ``synthetic/`` (need not exist yet).
        prefix: name prefix; tests use a unique one to register a temporary root.

    Returns:
        the dataset names, registered now or before.
    """
    names = []
    for split in SYNTHETIC_SPLITS:
        json_file, image_root = split_paths(root, split)
        name = f"{prefix}_{split}"
        _register_coco(name, synthetic_metadata(), json_file, image_root)
        names.append(name)
    return names


def default_shared_root() -> str:
    """``$TINYSAVER_SHARED_DATA``, else ``shared/data`` beside the repository root."""
    env = os.getenv("TINYSAVER_SHARED_DATA")
    if env:
        return os.path.expanduser(env)
    repo_root = Path(__file__).resolve().parents[2]  # tinysaver_det/data/datasets.py -> repo
    return str(repo_root.parent / "shared" / "data")


def register_shared_coco(shared_root: Optional[str] = None) -> List[str]:
    """
    Register the shared real-COCO subsets found under ``shared_root`` (default
    :func:`default_shared_root`). ``thing_classes`` and the category id map are filled from the
    json by ``load_coco_json`` on first load, as for detectron2's own COCO sets.

    Returns:
        the names of the sets whose folder exists.
    """
    shared_root = default_shared_root() if shared_root is None else shared_root
    names = []
    for name, (folder, json_rel, images_rel) in SHARED_COCO_SETS.items():
        base = os.path.join(shared_root, folder)
        if not os.path.isdir(base):
            continue  # absent on this machine: nothing to register
        _register_coco(name, {}, os.path.join(base, json_rel), os.path.join(base, images_rel))
        names.append(name)
    return names


_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")


def expand_data_path(path: str) -> str:
    """
    ``path`` with ``~`` and ``$VAR``/``${VAR}`` expanded and made absolute against the working
    directory. ``$TINYSAVER_SHARED_DATA`` and ``$DETECTRON2_DATASETS`` default as for the built-in
    sets when unset; any other unset variable is an error (a silently empty path would point
    somewhere else).
    """
    defaults = {
        "TINYSAVER_SHARED_DATA": default_shared_root(),
        "DETECTRON2_DATASETS": os.getenv("DETECTRON2_DATASETS", "datasets"),
    }

    def value(match: "re.Match") -> str:
        var = match.group(1) or match.group(2)
        if var in os.environ:
            return os.environ[var]
        if var in defaults:
            return defaults[var]
        raise KeyError(f"environment variable ${var} in the path {path!r} is not set")

    return os.path.abspath(os.path.expanduser(_VARIABLE.sub(value, path)))


def register_coco_datasets(
    entries: Sequence[Sequence[str]], key: str = "MODEL.TINYSAVER.DATA.COCO_DATASETS"
) -> List[List[str]]:
    """
    Register COCO-format datasets given as ``(name, json_file, image_root)`` entries, as
    ``register_coco_instances`` does, checking each first. ``key`` names the config key in errors.

    Returns:
        the entries with their paths expanded (see :func:`expand_data_path`), for the saved config.
    Raises:
        ValueError: an entry that is not three non-empty strings, or a name already registered for
            another json or image folder (a built-in set, say).
        FileNotFoundError: a missing json file or image folder.
    """
    resolved = []
    for i, entry in enumerate(entries):
        where = f"{key}[{i}]"
        if not (
            isinstance(entry, (list, tuple))
            and len(entry) == 3
            and all(isinstance(x, str) and x for x in entry)
        ):
            raise ValueError(f"{where} = {entry!r}: expected (name, json_file, image_root)")
        name = entry[0]
        try:
            json_file, image_root = expand_data_path(entry[1]), expand_data_path(entry[2])
        except KeyError as e:
            raise ValueError(f"{where} ({name}): {e.args[0]}") from None
        if not os.path.isfile(json_file):
            raise FileNotFoundError(f"{where} ({name}): the json file {json_file!r} does not exist")
        if not os.path.isdir(image_root):
            raise FileNotFoundError(
                f"{where} ({name}): the image folder {image_root!r} does not exist"
            )
        if name in DatasetCatalog.list():
            meta = MetadataCatalog.get(name)
            registered = (meta.get("json_file", None), meta.get("image_root", None))
            if registered != (json_file, image_root):
                raise ValueError(
                    f"{where}: the dataset name {name!r} is already registered, with json "
                    f"{registered[0]!r} and images {registered[1]!r}; choose another name"
                )
        else:
            register_coco_instances(name, {}, json_file, image_root)
        resolved.append([name, json_file, image_root])
    return resolved


def register_halves(name: str, json_file: str, image_root: str) -> List[str]:
    """
    Two disjoint halves of a COCO-format set, by image-id parity: ``<name>_calib`` (even ids), on
    which thresholds are chosen, and ``<name>_eval`` (odd ids), on which they are reported. COCO has
    no labelled split besides train and val, and the evaluator trains on train.
    """
    names = []
    for suffix, parity in (("calib", 0), ("eval", 1)):
        half = f"{name}_{suffix}"
        names.append(half)
        if half in DatasetCatalog.list():
            continue
        DatasetCatalog.register(
            half,
            lambda half=half, parity=parity: [
                d
                for d in load_coco_json(json_file, image_root, half)
                if d["image_id"] % 2 == parity
            ],
        )
        MetadataCatalog.get(half).set(
            json_file=json_file, image_root=image_root, evaluator_type="coco"
        )
    return names


def register_all(root: str) -> None:
    """Register the synthetic splits under ``root``, the shared COCO subsets, COCO's val halves."""
    root = os.path.expanduser(root)
    register_synthetic(root)
    register_shared_coco()
    register_halves(
        "coco_2017_val",
        os.path.join(root, "coco", "annotations", "instances_val2017.json"),
        os.path.join(root, "coco", "val2017"),
    )
    shared = os.path.join(default_shared_root(), "coco_val2017_subset")
    if os.path.isdir(shared):
        register_halves(
            "coco_2017_val_subset158",
            os.path.join(shared, "annotations", "instances_val2017.json"),
            os.path.join(shared, "val2017"),
        )


register_all(os.getenv("DETECTRON2_DATASETS", "datasets"))


def image_difficulties(dataset_name: str, image_ids: Sequence[int]) -> Optional[np.ndarray]:
    """
    The generator's difficulty in [0, 1] of each image, which the synthetic splits record per image
    (a router by true difficulty is a diagnostic of the saver-base pair); None for datasets whose
    json does not record it.
    """
    json_file = MetadataCatalog.get(dataset_name).get("json_file", None)
    if not json_file or not os.path.isfile(json_file):
        return None
    with open(json_file) as f:
        by_id = {im["id"]: im.get("difficulty") for im in json.load(f)["images"]}
    values = [by_id.get(int(i)) for i in image_ids]
    if any(v is None for v in values):
        return None
    return np.asarray(values, np.float64)
