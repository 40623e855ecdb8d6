"""Tests of the procedural synthetic detection dataset."""

import dataclasses
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from tinysaver_det.data.synthetic import (
    CATEGORIES,
    PRESETS,
    SYNTHETIC_SPLITS,
    SyntheticSpec,
    _visible_annotations,
    generate_split,
    prepare_all,
    render_image,
    split_paths,
    split_spec,
)

SPEC40 = dataclasses.replace(PRESETS["default"], num_images=40, seed=123)


@pytest.fixture(scope="module")
def split40(tmp_path_factory):
    """A 40-image default split, generated once for the read-only tests."""
    root = str(tmp_path_factory.mktemp("synth40"))
    json_file = generate_split(root, "val", SPEC40, progress=False)
    with open(json_file) as f:
        return root, json_file, json.load(f)


def _anns_by_image(data):
    out = {im["id"]: [] for im in data["images"]}
    for a in data["annotations"]:
        out[a["image_id"]].append(a)
    return out


def test_deterministic(tmp_path):
    spec = dataclasses.replace(SPEC40, num_images=8)
    j1 = generate_split(str(tmp_path / "a"), "s", spec, progress=False)
    j2 = generate_split(str(tmp_path / "b"), "s", spec, progress=False)
    assert Path(j1).read_bytes() == Path(j2).read_bytes()
    data = json.loads(Path(j1).read_text())
    for im in data["images"]:
        a = cv2.imread(str(tmp_path / "a" / "synthetic" / "s" / im["file_name"]))
        b = cv2.imread(str(tmp_path / "b" / "synthetic" / "s" / im["file_name"]))
        assert a is not None and np.array_equal(a, b)
    # Each image depends only on (seed, index): rendering out of order gives the same pixels.
    img5, d5, anns5 = render_image(spec, 5)
    render_image(spec, 2)
    img5b, d5b, anns5b = render_image(spec, 5)
    assert np.array_equal(img5, img5b) and d5 == d5b and anns5 == anns5b
    # A different seed gives different images.
    other, _, _ = render_image(dataclasses.replace(spec, seed=spec.seed + 1), 5)
    assert other.shape != img5.shape or not np.array_equal(other, img5)


def test_coco_format_and_boxes(split40):
    root, json_file, data = split40
    coco = COCO(json_file)
    assert sorted(coco.getCatIds()) == list(range(1, len(CATEGORIES) + 1))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CATEGORIES)
    assert len(coco.getImgIds()) == 40
    assert data["info"]["spec"] == SPEC40.to_json()
    ann_ids = [a["id"] for a in data["annotations"]]
    assert len(set(ann_ids)) == len(ann_ids) > 0
    _, image_dir = split_paths(root, "val")
    sizes = set()
    for im in data["images"]:
        img = cv2.imread(os.path.join(image_dir, im["file_name"]))
        assert img.shape[:2] == (im["height"], im["width"])
        assert SPEC40.min_size <= im["width"] <= SPEC40.max_size
        assert 0.0 <= im["difficulty"] <= 1.0
        sizes.add((im["height"], im["width"]))
    assert len(sizes) > 10, "image sizes should vary"
    images = {im["id"]: im for im in data["images"]}
    for a in data["annotations"]:
        im = images[a["image_id"]]
        x, y, w, h = a["bbox"]
        assert w >= SPEC40.min_box_size and h >= SPEC40.min_box_size
        assert x >= 0 and y >= 0 and x + w <= im["width"] and y + h <= im["height"]
        assert 1 <= a["category_id"] <= len(CATEGORIES)
        assert 0 < a["area"] <= w * h  # visible pixel count fits in its tight box
        assert a["iscrowd"] == 0


def test_difficulty_spread(split40):
    _, _, data = split40
    by_image = _anns_by_image(data)
    short = {im["id"]: min(im["height"], im["width"]) for im in data["images"]}

    def mean_side(img_id):
        return np.mean([max(a["bbox"][2:]) for a in by_image[img_id]]) / short[img_id]

    easy = [i for i, anns in by_image.items() if 1 <= len(anns) <= 3 and mean_side(i) > 0.25]
    hard = [i for i, anns in by_image.items() if len(anns) >= 8 and mean_side(i) < 0.18]
    assert len(easy) >= 3, "expected several images with 1-3 large objects"
    assert len(hard) >= 3, "expected several images with >= 8 small objects"
    difficulty = np.array([im["difficulty"] for im in data["images"]])
    assert difficulty.min() < 0.2 and difficulty.max() > 0.8
    # Difficulty drives the content: harder images hold more objects.
    counts = np.array([len(by_image[im["id"]]) for im in data["images"]])
    assert np.corrcoef(difficulty, counts)[0, 1] > 0.7


def test_visible_annotations_occlusion_rule():
    spec = SyntheticSpec()
    owner = np.full((50, 60), -1, np.int16)
    owner[10:30, 10:30] = 0  # object 0: full area 400, then mostly covered by object 1
    owner[12:30, 10:30] = 1  # object 1: visible, full area 360
    owner[40:42, 40:50] = 2  # object 2: visible but only 2 px tall
    objects = [(0, 400, (10, 10, 30, 30)), (3, 360, (10, 12, 30, 30)), (1, 20, (40, 40, 50, 42))]
    anns = _visible_annotations(owner, objects, spec)
    assert anns == [(4, [10.0, 12.0, 20.0, 18.0], 360)]


def test_shifted_preset_differs(tmp_path):
    default, shifted = PRESETS["default"], PRESETS["shifted"]
    assert not set(default.background_styles) & set(shifted.background_styles)
    n = 30
    stats = {}
    for name, spec in (("default", default), ("shifted", shifted)):
        spec = dataclasses.replace(spec, num_images=n, seed=7)
        out = [render_image(spec, i) for i in range(n)]
        stats[name] = (np.mean([d for _, d, _ in out]), np.mean([len(a) for _, _, a in out]))
    assert stats["shifted"][0] > stats["default"][0] + 0.05
    assert stats["shifted"][1] > stats["default"][1]


def test_split_definitions():
    seeds = [d.seed for d in SYNTHETIC_SPLITS.values()]
    assert len(set(seeds)) == len(seeds), "every split needs its own seed"
    assert set(SYNTHETIC_SPLITS) == {"train", "evaluator", "calib", "val", "test", "shifted"}
    # Thresholds are chosen and reported on splits large enough for the AP's noise (routing issue).
    assert min(split_spec(s).num_images for s in ("calib", "test")) >= 1500
    assert split_spec("train").num_images == 1200
    assert split_spec("train", 0.05).num_images == 60
    assert split_spec("val", 0.001).num_images >= 8
    assert split_spec("shifted").background_styles == PRESETS["shifted"].background_styles
    with pytest.raises(KeyError):
        prepare_all("/nonexistent", splits=["nope"])


def test_resume_reuses_complete_split(tmp_path):
    spec = dataclasses.replace(SPEC40, num_images=6)
    json_file = generate_split(str(tmp_path), "s", spec, progress=False)
    _, image_dir = split_paths(str(tmp_path), "s")
    image = os.path.join(image_dir, "000001.jpg")
    before = (os.stat(json_file).st_mtime_ns, os.stat(image).st_mtime_ns)
    assert generate_split(str(tmp_path), "s", spec, progress=False) == json_file
    assert (os.stat(json_file).st_mtime_ns, os.stat(image).st_mtime_ns) == before
    # A different spec regenerates, and images of the larger earlier run are removed.
    generate_split(str(tmp_path), "s", spec, num_images=4, progress=False)
    data = json.loads(Path(json_file).read_text())
    assert len(data["images"]) == 4 and data["info"]["spec"]["num_images"] == 4
    assert sorted(os.listdir(image_dir)) == [f"{i:06d}.jpg" for i in range(1, 5)]


def test_interrupted_run_completes(tmp_path):
    spec = dataclasses.replace(SPEC40, num_images=6)
    json_file = generate_split(str(tmp_path), "s", spec, progress=False)
    reference = Path(json_file).read_bytes()
    _, image_dir = split_paths(str(tmp_path), "s")
    # Simulate a crash: json missing, one image never written, a stray temp file left behind.
    os.remove(json_file)
    os.remove(os.path.join(image_dir, "000006.jpg"))
    Path(image_dir, "000006.jpg.tmp999").write_bytes(b"partial")  # from older versions
    Path(image_dir, ".tmp-x1y2000005.jpg").write_bytes(b"partial")  # from utils/atomic.py
    generate_split(str(tmp_path), "s", spec, progress=False)
    assert Path(json_file).read_bytes() == reference
    assert sorted(os.listdir(image_dir)) == [f"{i:06d}.jpg" for i in range(1, 7)]
    # A complete json whose image went missing is not trusted either.
    os.remove(os.path.join(image_dir, "000003.jpg"))
    generate_split(str(tmp_path), "s", spec, progress=False)
    assert os.path.isfile(os.path.join(image_dir, "000003.jpg"))


def test_prepare_all_and_cli(tmp_path, capsys):
    import importlib.util

    script = Path(__file__).resolve().parents[2] / "datasets" / "prepare_synthetic.py"
    module_spec = importlib.util.spec_from_file_location("prepare_synthetic", script)
    cli = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(cli)
    cli.main(["--root", str(tmp_path), "--scale", "0.01", "--splits", "calib", "shifted"])
    out = capsys.readouterr().out
    # shifted: 600 x 0.01 = 6, raised to the minimum of 8.
    assert "synthetic_calib: 15 images" in out and "synthetic_shifted: 8 images" in out
    written = sorted(os.listdir(tmp_path / "synthetic" / "annotations"))
    assert written == ["instances_calib.json", "instances_shifted.json"]
