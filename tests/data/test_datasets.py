"""Tests of dataset registration: synthetic splits and the shared real-COCO subsets."""

import os
import uuid

import pytest

import tinysaver_det  # noqa: F401  (registers the datasets)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from tinysaver_det.data.datasets import (
    SHARED_COCO_SETS,
    default_shared_root,
    register_shared_coco,
    register_synthetic,
)
from tinysaver_det.data.synthetic import CATEGORIES, SYNTHETIC_SPLITS, prepare_all


@pytest.fixture
def tmp_prefix():
    """A unique dataset-name prefix, unregistered again after the test."""
    prefix = f"synthtest_{uuid.uuid4().hex[:8]}"
    yield prefix
    for name in list(DatasetCatalog.list()):
        if name.startswith(prefix):
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_import_registers_synthetic_without_files():
    for split in SYNTHETIC_SPLITS:
        name = f"synthetic_{split}"
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == list(CATEGORIES)
        assert meta.evaluator_type == "coco"
        assert meta.json_file.endswith(
            os.path.join("synthetic", "annotations", f"instances_{split}.json")
        )
        assert meta.image_root.endswith(os.path.join("synthetic", split))


def test_synthetic_loads_through_catalog(tmp_path, tmp_prefix):
    prepare_all(str(tmp_path), scale=0.01, splits=["val", "shifted"], progress=False)
    names = register_synthetic(str(tmp_path), prefix=tmp_prefix)
    assert names == [f"{tmp_prefix}_{s}" for s in SYNTHETIC_SPLITS]
    # Registering again is a no-op, not a duplicate-name error.
    assert register_synthetic(str(tmp_path), prefix=tmp_prefix) == names

    dicts = DatasetCatalog.get(f"{tmp_prefix}_val")
    assert len(dicts) == 8
    assert sum(len(d["annotations"]) for d in dicts) > 8
    for d in dicts:
        assert os.path.isfile(d["file_name"])
        for a in d["annotations"]:
            assert a["bbox_mode"] == BoxMode.XYWH_ABS
            assert 0 <= a["category_id"] < len(CATEGORIES)  # mapped to contiguous ids
    meta = MetadataCatalog.get(f"{tmp_prefix}_val")
    assert meta.thing_classes == list(CATEGORIES)
    assert meta.thing_dataset_id_to_contiguous_id == {i + 1: i for i in range(len(CATEGORIES))}
    # A split that was never generated is registered but fails only when loaded, naming its json.
    assert f"{tmp_prefix}_train" in DatasetCatalog.list()
    with pytest.raises(FileNotFoundError, match=r"instances_train\.json"):
        DatasetCatalog.get(f"{tmp_prefix}_train")


def test_shared_root_env_and_absent_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYSAVER_SHARED_DATA", str(tmp_path))
    assert default_shared_root() == str(tmp_path)
    assert register_shared_coco(str(tmp_path / "missing")) == []


@pytest.mark.parametrize(
    "name,num_images", [("coco_2017_val_subset158", 158), ("coco128_train2017", 128)]
)
def test_shared_coco_sets_load(name, num_images):
    folder = os.path.join(default_shared_root(), SHARED_COCO_SETS[name][0])
    if not os.path.isdir(folder):
        pytest.skip(f"shared COCO folder {folder} is absent")
    assert name in DatasetCatalog.list()
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == num_images
    assert sum(len(d["annotations"]) for d in dicts) > num_images
    assert all(os.path.isfile(d["file_name"]) for d in dicts[:5])
    meta = MetadataCatalog.get(name)
    assert len(meta.thing_classes) == 80
    assert meta.evaluator_type == "coco"
