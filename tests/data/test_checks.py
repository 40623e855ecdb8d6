"""Bad input: unreadable images listed or skipped, odd pixel formats read right, boxes cleaned."""

import json
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import detection_utils, transforms as T
from detectron2.data.datasets import load_coco_json, register_coco_instances
from detectron2.structures import BoxMode
from tinysaver_det.data.checks import (
    RobustDatasetMapper,
    checked_dataset_dicts,
    clean_annotations,
    image_problem,
    read_image_any,
)


def gradient(h=20, w=30):
    return (np.arange(h * w).reshape(h, w) % 256).astype(np.uint8)


def test_grayscale_rgba_16bit_and_exif_images_read_as_8bit_bgr(tmp_path):
    gray = tmp_path / "gray.png"
    Image.fromarray(gradient()).save(gray)
    rgba = tmp_path / "rgba.png"
    alpha = np.full((20, 30), 7, np.uint8)
    Image.fromarray(np.dstack([gradient()] * 3 + [alpha]), mode="RGBA").save(rgba)
    deep = tmp_path / "deep.png"
    Image.fromarray((gradient().astype(np.uint16) * 257)).save(deep)  # 16-bit, full range
    for path in (gray, rgba, deep):
        image = read_image_any(str(path), "BGR")
        assert image.shape == (20, 30, 3) and image.dtype == np.uint8, path
        np.testing.assert_allclose(image[..., 0], gradient(), atol=1, err_msg=str(path))
    # A plain conversion would saturate a 16-bit image to white; here it keeps its range.
    assert read_image_any(str(deep)).max() == 255 and read_image_any(str(deep)).min() == 0

    rotated = tmp_path / "exif.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(np.dstack([gradient()] * 3)).save(rotated, exif=exif.tobytes())
    assert read_image_any(str(rotated)).shape == (30, 20, 3)


def test_image_problem_names_each_kind_of_bad_file(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(np.dstack([gradient(64, 64)] * 3)).save(good, quality=95)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "text.jpg"
    text.write_text("not an image")
    assert image_problem(str(good)) is None
    assert image_problem(str(tmp_path / "missing.jpg")) == "missing"
    assert image_problem(str(empty)) == "empty file"
    assert "unreadable" in image_problem(str(truncated))
    assert "unreadable" in image_problem(str(text))


def test_clean_annotations_clips_and_drops():
    record = {
        "height": 50,
        "width": 60,
        "annotations": [
            # fine; crossing the border; zero width; wholly outside; degenerate (x1 < x0)
            {"bbox": [10, 10, 20, 20], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0},
            {"bbox": [50, 40, 20, 20], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1},
            {"bbox": [5, 5, 0, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0},
            {"bbox": [100, 100, 10, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0},
            {"bbox": [30, 30, 20, 20], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0},
        ],
    }
    cleaned, clipped, dropped = clean_annotations(record)
    assert (clipped, dropped) == (2, 3)
    assert [a["bbox"] for a in cleaned["annotations"]] == [[10, 10, 30, 30], [50, 40, 60.0, 50.0]]
    assert cleaned["annotations"][1]["category_id"] == 1


def write_coco(tmp_path, files, annotations=None, categories=None):
    images = [{"id": i + 1, "file_name": f, "height": 64, "width": 64} for i, f in enumerate(files)]
    anns = (
        annotations
        if annotations is not None
        else [
            {
                "id": i + 1,
                "image_id": i + 1,
                "category_id": 1,
                "bbox": [4, 4, 20, 20],
                "area": 400,
                "iscrowd": 0,
            }
            for i in range(len(files))
        ]
    )
    path = tmp_path / "instances.json"
    path.write_text(
        json.dumps(
            {
                "images": images,
                "annotations": anns,
                "categories": categories or [{"id": 1, "name": "thing"}],
            }
        )
    )
    return str(path)


def register(tmp_path, files, **kwargs):
    name = f"checks_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, write_coco(tmp_path, files, **kwargs), str(tmp_path))
    return name


def test_unreadable_images_fail_with_their_list_or_are_skipped(tmp_path):
    for f in ("a.jpg", "b.jpg"):
        Image.fromarray(np.dstack([gradient(64, 64)] * 3)).save(tmp_path / f)
    (tmp_path / "broken.jpg").write_bytes((tmp_path / "a.jpg").read_bytes()[:100])
    name = register(tmp_path, ["a.jpg", "broken.jpg", "gone.jpg", "b.jpg"])
    with pytest.raises(ValueError) as err:
        checked_dataset_dicts([name])
    message = str(err.value)
    assert "2 of 4 images" in message and "broken.jpg" in message and "gone.jpg: missing" in message
    assert "SKIP_BAD_IMAGES" in message
    kept = checked_dataset_dicts([name], skip_bad_images=True)
    assert [d["file_name"].rsplit("/", 1)[-1] for d in kept] == ["a.jpg", "b.jpg"]


def test_images_without_annotations_are_kept_for_evaluation(tmp_path):
    Image.fromarray(np.dstack([gradient(64, 64)] * 3)).save(tmp_path / "a.jpg")
    name = register(tmp_path, ["a.jpg"], annotations=[])
    (record,) = checked_dataset_dicts([name])
    assert record["annotations"] == []
    mapped = RobustDatasetMapper(is_train=False, augmentations=[], image_format="BGR")(record)
    assert tuple(mapped["image"].shape) == (3, 64, 64)


def test_unknown_category_id_is_named(tmp_path):
    Image.fromarray(np.dstack([gradient(64, 64)] * 3)).save(tmp_path / "a.jpg")
    anns = [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 99,
            "bbox": [4, 4, 20, 20],
            "area": 400,
            "iscrowd": 0,
        }
    ]
    json_file = write_coco(tmp_path, ["a.jpg"], annotations=anns)
    with pytest.raises(KeyError, match="category_id=99"):
        load_coco_json(json_file, str(tmp_path), f"unknown_{uuid.uuid4().hex[:6]}")


def test_missing_data_names_the_file_and_the_data_root_variable(tmp_path, monkeypatch):
    # Relative data paths (the default data root 'datasets') run from another directory.
    from tinysaver_det.data.datasets import register_synthetic

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    name = register_synthetic("datasets", prefix=f"nodata_{uuid.uuid4().hex[:8]}")[0]
    with pytest.raises(FileNotFoundError) as error:
        checked_dataset_dicts([name])
    message = str(error.value)
    assert name in message and "datasets/synthetic" in message and "DETECTRON2_DATASETS" in message
    assert str(tmp_path) in message  # where the relative root was looked up


class RecordReader(T.Augmentation):
    """An identity augmentation that records which reader detectron2's module holds meanwhile."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def get_transform(self, image):
        self.seen.append(detection_utils.read_image)
        return T.NoOpTransform()


def test_mapper_reads_odd_images_for_training_without_patching_detectron2(tmp_path):
    deep = tmp_path / "deep.png"
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint16) * 1000, (64, 1))).save(deep)  # 16-bit
    gray = tmp_path / "gray.png"
    Image.fromarray(gradient(64, 64)).save(gray)
    name = register(tmp_path, ["deep.png", "gray.png"])
    records = checked_dataset_dicts([name])
    original = detection_utils.read_image
    recorder = RecordReader()
    mapper = RobustDatasetMapper(is_train=True, augmentations=[recorder], image_format="BGR")
    deep_out, gray_out = [mapper(r) for r in records]
    for out in (deep_out, gray_out):
        assert tuple(out["image"].shape) == (3, 64, 64) and out["image"].dtype == torch.uint8
        assert out["instances"].gt_boxes.tensor.tolist() == [[4.0, 4.0, 24.0, 24.0]]
    # Scaled by the image's own range (a plain conversion saturates it to white).
    assert deep_out["image"].max() == 255 and deep_out["image"].min() == 0
    assert torch.equal(gray_out["image"][0], torch.from_numpy(gradient(64, 64)))
    # detectron2's reader is the same function during the call as before and after it.
    assert recorder.seen == [original, original] and detection_utils.read_image is original
    assert "annotations" not in deep_out and records[0]["annotations"]  # the input is not modified
