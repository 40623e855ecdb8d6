"""
Tests of registering COCO-format datasets from the config (MODEL.TINYSAVER.DATA.COCO_DATASETS):
two sets from two jsons in one run, registration in every `launch` worker, and each error case.
"""

import json
import os
import socket
import uuid

import cv2
import numpy as np
import pytest

import tinysaver_det  # noqa: F401  (registers the built-in datasets)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import launch
from tinysaver_det.config import load_config
from tinysaver_det.data.datasets import expand_data_path, register_coco_datasets

KEY = "MODEL.TINYSAVER.DATA.COCO_DATASETS"
CONFIG = os.path.join(
    os.path.dirname(__file__), "..", "..", "configs", "Synthetic", "base_cascade_rcnn_R_18_FPN.yaml"
)


def write_coco_set(folder, categories, boxes_per_image):
    """A tiny COCO-format set: one 32x48 image per entry of `boxes_per_image`, with non-contiguous
    category ids as in COCO. Returns (json_file, image_root)."""
    image_root = os.path.join(folder, "images")
    os.makedirs(image_root, exist_ok=True)
    images, annotations = [], []
    for i, boxes in enumerate(boxes_per_image):
        name = f"img{i}.jpg"
        cv2.imwrite(os.path.join(image_root, name), np.full((32, 48, 3), 40 * i, np.uint8))
        images.append({"id": 10 + i, "file_name": name, "width": 48, "height": 32})
        for j, (cat, box) in enumerate(boxes):
            annotations.append(
                {
                    "id": 100 * i + j,
                    "image_id": 10 + i,
                    "category_id": cat,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    json_file = os.path.join(folder, "instances.json")
    with open(json_file, "w") as f:
        json.dump(
            {
                "images": images,
                "annotations": annotations,
                "categories": [{"id": i, "name": n} for i, n in categories],
            },
            f,
        )
    return json_file, image_root


@pytest.fixture
def names():
    """Unique dataset names, unregistered again after the test."""
    made = [f"cfgset_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    yield made
    for name in made:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


@pytest.fixture
def two_sets(tmp_path):
    cells = write_coco_set(
        str(tmp_path / "cells"),
        [(1, "RBC"), (3, "Platelets")],
        [[(1, [2, 2, 10, 10]), (3, [20, 5, 6, 6])], [(3, [1, 1, 4, 5])]],
    )
    cars = write_coco_set(
        str(tmp_path / "cars"), [(7, "car")], [[(7, [0, 0, 30, 20])], [(7, [5, 5, 10, 10])], []]
    )
    return cells, cars


def entries_opt(entries):
    return [KEY, repr([list(e) for e in entries])]


def test_two_datasets_from_two_jsons_in_one_run(two_sets, names):
    (cells_json, cells_root), (cars_json, cars_root) = two_sets
    cfg = load_config(
        CONFIG, entries_opt([(names[0], cells_json, cells_root), (names[1], cars_json, cars_root)])
    )
    assert cfg.MODEL.TINYSAVER.DATA.COCO_DATASETS == [
        [names[0], cells_json, cells_root],
        [names[1], cars_json, cars_root],
    ]
    cells, cars = DatasetCatalog.get(names[0]), DatasetCatalog.get(names[1])
    assert [len(d["annotations"]) for d in cells] == [2, 1]
    assert len(cars) == 3 and sum(len(d["annotations"]) for d in cars) == 2
    assert MetadataCatalog.get(names[0]).thing_classes == ["RBC", "Platelets"]
    assert MetadataCatalog.get(names[0]).thing_dataset_id_to_contiguous_id == {1: 0, 3: 1}
    assert MetadataCatalog.get(names[1]).thing_classes == ["car"]
    # Contiguous ids in the dicts, as detectron2's trainers expect.
    assert sorted(a["category_id"] for d in cells for a in d["annotations"]) == [0, 1, 1]
    # Loading the same config again (another entry point in the same process) is a no-op.
    again = load_config(CONFIG, entries_opt([(names[0], cells_json, cells_root)]))
    assert again.MODEL.TINYSAVER.DATA.COCO_DATASETS[0][0] == names[0]


def test_paths_expand_variables_and_resolve_against_the_working_directory(
    two_sets, names, tmp_path, monkeypatch
):
    (cells_json, cells_root), _ = two_sets
    monkeypatch.setenv("MY_DATA", str(tmp_path))
    monkeypatch.chdir(tmp_path / "cells")
    resolved = register_coco_datasets([(names[0], "$MY_DATA/cells/instances.json", "images")])
    assert resolved == [[names[0], cells_json, cells_root]]
    monkeypatch.setenv("TINYSAVER_SHARED_DATA", str(tmp_path))
    assert expand_data_path("${TINYSAVER_SHARED_DATA}/x") == os.path.join(str(tmp_path), "x")


def test_config_file_entries_are_saved_with_absolute_paths(two_sets, names, tmp_path):
    (cells_json, cells_root), _ = two_sets
    config = tmp_path / "mine.yaml"
    config.write_text(
        f"_BASE_: {os.path.abspath(CONFIG)}\nMODEL:\n  TINYSAVER:\n    DATA:\n"
        f"      COCO_DATASETS: [['{names[0]}', '{cells_json}', '{cells_root}']]\n"
        f"DATASETS:\n  TRAIN: ('{names[0]}',)\n"
    )
    cfg = load_config(str(config))
    dumped = tmp_path / "dumped.yaml"
    dumped.write_text(cfg.dump())
    # The written config loads again, from anywhere, and names the same dataset.
    reloaded = load_config(str(dumped)).MODEL.TINYSAVER.DATA.COCO_DATASETS
    assert reloaded == [[names[0], cells_json, cells_root]]
    assert len(DatasetCatalog.get(cfg.DATASETS.TRAIN[0])) == 2


@pytest.mark.parametrize(
    "case",
    [
        "missing_json",
        "missing_folder",
        "builtin_clash",
        "other_json_clash",
        "malformed",
        "unset_variable",
    ],
)
def test_bad_entries_are_refused_naming_the_key(case, two_sets, names):
    (cells_json, cells_root), (cars_json, cars_root) = two_sets
    entry, error, words = {
        "missing_json": (
            (names[0], cells_json + ".missing", cells_root),
            FileNotFoundError,
            ["json file", ".missing"],
        ),
        "missing_folder": (
            (names[0], cells_json, cells_root + "_missing"),
            FileNotFoundError,
            ["image folder", "_missing"],
        ),
        "builtin_clash": (
            ("synthetic_val", cells_json, cells_root),
            ValueError,
            ["'synthetic_val' is already registered"],
        ),
        "other_json_clash": ((names[0], cars_json, cars_root), ValueError, ["already registered"]),
        "malformed": (
            (names[0], cells_json),
            ValueError,
            ["expected (name, json_file, image_root)"],
        ),
        "unset_variable": (
            (names[0], "$TINYSAVER_NO_SUCH_VARIABLE/x.json", cells_root),
            ValueError,
            ["$TINYSAVER_NO_SUCH_VARIABLE", "not set"],
        ),
    }[case]
    if case == "other_json_clash":
        register_coco_datasets([(names[0], cells_json, cells_root)])
    with pytest.raises(error) as info:
        load_config(CONFIG, entries_opt([entry]))
    message = str(info.value)
    assert KEY in message
    for word in words:
        assert word in message
    if case != "other_json_clash":
        assert names[0] not in DatasetCatalog.list()  # nothing half-registered


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def count_in_worker(config_file: str, out_dir: str) -> None:
    """One `launch` worker: load the config (as every entry point does), then read both datasets."""
    from detectron2.utils import comm

    cfg = load_config(config_file)
    counts = {name: len(DatasetCatalog.get(name)) for name in cfg.DATASETS.TRAIN}
    with open(os.path.join(out_dir, f"rank{comm.get_rank()}.json"), "w") as f:
        json.dump({"world": comm.get_world_size(), "counts": counts}, f)


def test_every_launch_worker_registers_the_datasets(two_sets, names, tmp_path):
    (cells_json, cells_root), (cars_json, cars_root) = two_sets
    config = tmp_path / "two.yaml"
    config.write_text(
        f"_BASE_: {os.path.abspath(CONFIG)}\n"
        "MODEL:\n  TINYSAVER:\n    DATA:\n      COCO_DATASETS:\n"
        f"        - ['{names[0]}', '{cells_json}', '{cells_root}']\n"
        f"        - ['{names[1]}', '{cars_json}', '{cars_root}']\n"
        f"DATASETS:\n  TRAIN: ('{names[0]}', '{names[1]}')\n"
    )
    launch(
        count_in_worker,
        2,
        dist_url=f"tcp://127.0.0.1:{free_port()}",
        args=(str(config), str(tmp_path)),
    )
    for rank in (0, 1):
        with open(tmp_path / f"rank{rank}.json") as f:
            result = json.load(f)
        assert result == {"world": 2, "counts": {names[0]: 2, names[1]: 3}}
