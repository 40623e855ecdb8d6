"""Every config under configs/ parses; every detector config builds, trains one step and infers."""

import math
import os
from pathlib import Path

import pytest
import torch
from conftest import TINY_INPUT

import tinysaver_det  # noqa: F401  (registers the meta-architecture, heads and datasets)
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from tinysaver_det.config import load_config
from tinysaver_det.data.datasets import default_shared_root

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"
ALL_CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))
# Shared fragments that only exist to be inherited (not a detector of their own).
FRAGMENTS = {
    CONFIG_DIR / "Synthetic" / "Base-Synthetic.yaml",
    CONFIG_DIR / "BCCD" / "Base-BCCD.yaml",
}
# The BCCD configs register their splits from the shared data folder when loaded as they are.
BCCD_ABSENT = not os.path.isdir(os.path.join(default_shared_root(), "bccd"))
NO_DATASETS = ["MODEL.TINYSAVER.DATA.COCO_DATASETS", "[]"]
# Keep the COCO-sized configs cheap: the architecture stays, the images shrink.
SMALL = NO_DATASETS + ["MODEL.DEVICE", "cpu", *TINY_INPUT]


def _rel(path: Path) -> str:
    return str(path.relative_to(CONFIG_DIR))


def _is_tinysaver(path: Path) -> bool:
    return load_config(str(path), NO_DATASETS).MODEL.META_ARCHITECTURE == "TinySaverRCNN"


DETECTOR_CONFIGS = [p for p in ALL_CONFIGS if p not in FRAGMENTS and not _is_tinysaver(p)]
TINYSAVER_CONFIGS = [p for p in ALL_CONFIGS if _is_tinysaver(p)]


def test_the_expected_configs_are_found():
    names = {_rel(p) for p in DETECTOR_CONFIGS}
    assert {
        "Synthetic/saver_retinanet_R_18_FPN.yaml",
        "Synthetic/base_cascade_rcnn_R_18_FPN.yaml",
    } <= names
    assert {"Base-RCNN-FPN.yaml", "Base-RetinaNet.yaml"} <= names  # the COCO (model zoo) configs
    assert "Synthetic/tinysaver_R18_cascade_R18.yaml" in {_rel(p) for p in TINYSAVER_CONFIGS}


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=_rel)
def test_every_config_parses(path):
    if path.parent.name == "BCCD" and BCCD_ABSENT:
        pytest.skip(f"the shared BCCD folder under {default_shared_root()} is absent")
    cfg = load_config(str(path), ["MODEL.DEVICE", "cpu"])
    assert cfg.MODEL.DEVICE == "cpu"
    assert "TINYSAVER" in cfg.MODEL


@pytest.mark.parametrize("path", TINYSAVER_CONFIGS, ids=_rel)
def test_tinysaver_sub_configs_resolve_against_the_yaml(path):
    cfg = load_config(str(path), NO_DATASETS)
    for part in ("SAVER", "BASE"):
        sub = cfg.MODEL.TINYSAVER[part].CONFIG_FILE
        assert os.path.isabs(sub) and os.path.isfile(sub), (part, sub)
        assert os.path.dirname(sub) == str(path.parent)
        load_config(sub, NO_DATASETS)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_sub_config_paths_are_relative_to_the_file_that_names_them(tmp_path, monkeypatch):
    # The sub-configs live in one folder; the TinySaver config in a sibling folder inherits a
    # config from a third folder, which is the one naming the saver: its own folder is the anchor.
    synthetic = CONFIG_DIR / "Synthetic"
    saver = _write(
        tmp_path / "detectors" / "saver.yaml",
        f'_BASE_: "{synthetic}/saver_retinanet_R_18_FPN.yaml"\n',
    )
    base = _write(
        tmp_path / "detectors" / "base.yaml",
        f'_BASE_: "{synthetic}/base_cascade_rcnn_R_18_FPN.yaml"\n',
    )
    _write(
        tmp_path / "shared" / "parent.yaml",
        'MODEL:\n  META_ARCHITECTURE: "TinySaverRCNN"\n  TINYSAVER:\n    SAVER:\n'
        '      CONFIG_FILE: "../detectors/saver.yaml"\n',
    )
    child = _write(
        tmp_path / "experiments" / "run1" / "tinysaver.yaml",
        '_BASE_: "../../shared/parent.yaml"\nMODEL:\n  TINYSAVER:\n    BASE:\n'
        '      CONFIG_FILE: "../../detectors/base.yaml"\n',
    )
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    for cwd in (REPO, elsewhere, tmp_path / "experiments"):
        monkeypatch.chdir(cwd)
        for name in (str(child), os.path.relpath(child, cwd)):
            cfg = load_config(name, ["MODEL.DEVICE", "cpu"])
            assert cfg.MODEL.META_ARCHITECTURE == "TinySaverRCNN"
            assert Path(cfg.MODEL.TINYSAVER.SAVER.CONFIG_FILE).resolve() == saver.resolve()
            assert Path(cfg.MODEL.TINYSAVER.BASE.CONFIG_FILE).resolve() == base.resolve()


def test_the_shipped_tinysaver_config_loads_from_another_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(
        str(CONFIG_DIR / "Synthetic" / "tinysaver_R18_cascade_R18.yaml"), ["MODEL.DEVICE", "cpu"]
    )
    for part in ("SAVER", "BASE"):
        assert os.path.isfile(cfg.MODEL.TINYSAVER[part].CONFIG_FILE)


def test_sub_config_path_given_in_opts_resolves_against_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = load_config(
        str(CONFIG_DIR / "Synthetic" / "tinysaver_R18_cascade_R18.yaml"),
        ["MODEL.TINYSAVER.SAVER.CONFIG_FILE", "configs/Synthetic/saver_retinanet_R_18_FPN.yaml"],
    )
    path = cfg.MODEL.TINYSAVER.SAVER.CONFIG_FILE
    expected = CONFIG_DIR / "Synthetic" / "saver_retinanet_R_18_FPN.yaml"
    assert Path(path).resolve() == expected.resolve()


def test_missing_config_file_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(str(tmp_path / "nope.yaml"))


def _training_inputs(num_classes, sizes=((67, 93), (80, 64)), seed=0):
    g = torch.Generator().manual_seed(seed)
    inputs = []
    for h, w in sizes:
        gt = Instances((h, w))
        gt.gt_boxes = Boxes(torch.tensor([[5.0, 6.0, 40.0, 50.0], [20.0, 10.0, w - 3.0, h - 4.0]]))
        gt.gt_classes = torch.tensor([0, num_classes - 1])
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
        inputs.append({"image": image, "instances": gt, "height": h, "width": w})
    return inputs


def _num_classes(cfg):
    if cfg.MODEL.META_ARCHITECTURE == "RetinaNet":
        return cfg.MODEL.RETINANET.NUM_CLASSES
    return cfg.MODEL.ROI_HEADS.NUM_CLASSES


@pytest.mark.parametrize("path", DETECTOR_CONFIGS, ids=_rel)
def test_detector_config_builds_trains_and_infers(path):
    torch.manual_seed(0)
    # Keep every candidate box, so that an untrained detector (a RetinaNet starts from the
    # focal-loss prior, scores ~0.01) still returns detections whose bounds can be checked.
    cfg = load_config(
        str(path),
        SMALL
        + ["MODEL.RETINANET.SCORE_THRESH_TEST", "0.0", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"],
    )
    model = build_model(cfg)

    model.train()
    with EventStorage(0):
        losses = model(_training_inputs(_num_classes(cfg)))
    assert losses and all(k.startswith("loss_") for k in losses), sorted(losses)
    for k, v in losses.items():
        assert torch.isfinite(v).all(), (k, v)
    sum(losses.values()).backward()

    model.eval()
    g = torch.Generator().manual_seed(1)
    # Two odd sizes, outputs requested at another resolution than the input tensor.
    requests = [((67, 93), (134, 186)), ((80, 64), (40, 32))]
    inputs = [
        {
            "image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g),
            "height": oh,
            "width": ow,
        }
        for (h, w), (oh, ow) in requests
    ]
    with torch.no_grad():
        outputs = model(inputs)
    assert len(outputs) == 2
    for out, (_, (oh, ow)) in zip(outputs, requests):
        inst = out["instances"]
        assert isinstance(inst, Instances)
        assert inst.image_size == (oh, ow)
        assert inst.has("pred_boxes") and inst.has("scores") and inst.has("pred_classes")
        assert torch.isfinite(inst.pred_boxes.tensor).all()
        if len(inst):  # an untrained detector's boxes may all collapse to empty on one image ...
            boxes = inst.pred_boxes.tensor
            assert boxes[:, 0::2].max() <= ow and boxes[:, 1::2].max() <= oh
            assert boxes.min() >= 0
            classes = inst.pred_classes
            assert 0 <= int(classes.min()) and int(classes.max()) < _num_classes(cfg)
    # ... never on both: some bounds were checked.
    assert sum(len(out["instances"]) for out in outputs) > 0


@pytest.mark.parametrize("path", TINYSAVER_CONFIGS, ids=_rel)
def test_tinysaver_config_builds_trains_and_infers(path):
    """Every TinySaver config: the model builds, an evaluator step trains, inference routes."""
    if path.parent.name == "BCCD" and BCCD_ABSENT:
        # Its saver and base configs register the BCCD splits when the model loads them.
        pytest.skip(f"the shared BCCD folder under {default_shared_root()} is absent")
    torch.manual_seed(0)
    cfg = load_config(str(path), SMALL)
    model = build_model(cfg)
    num_classes = model.evaluator.num_classes
    model.train()
    with EventStorage(0):
        losses = model(_training_inputs(num_classes))
    assert set(losses) == {"loss_quality", "loss_quality_rank"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.evaluator.parameters())
    assert all(p.grad is None for p in model.saver.parameters())  # the saver stays frozen

    model.eval()
    small_base = load_config(cfg.MODEL.TINYSAVER.BASE.CONFIG_FILE).INPUT.MIN_SIZE_TEST <= 256
    # Every image exits (the saver alone); with a base of synthetic size, also every image routed.
    for threshold in (-math.inf, math.inf) if small_base else (-math.inf,):
        model.threshold = threshold
        inputs = [dict(x, height=2 * x["height"]) for x in _training_inputs(num_classes, seed=1)]
        with torch.no_grad():
            outputs = model(inputs)
        for x, out in zip(inputs, outputs):
            assert out["instances"].image_size == (x["height"], x["width"])
            assert out["tinysaver"]["path"] == ("saver" if threshold < 0 else "base")


def test_the_base_from_the_saver_starts_from_every_weight_of_a_saver_checkpoint(tmp_path):
    """base_cascade_rcnn_R_18_FPN_from_saver.yaml continues the saver's training at 192 px: a
    saver checkpoint must fill the whole base (the checked loader refuses a partial fit), which
    runs at three times the saver's input size and keeps more proposals."""
    from tinysaver_det.checkpoint import CheckedCheckpointer
    from tinysaver_det.engine.trainer import load_weights

    synthetic = CONFIG_DIR / "Synthetic"
    torch.manual_seed(0)
    saver_cfg = load_config(
        str(synthetic / "saver_cascade_rcnn_R_18_FPN.yaml"), ["MODEL.DEVICE", "cpu"]
    )
    saver = build_model(saver_cfg)
    CheckedCheckpointer(saver, str(tmp_path)).save("saver")

    base_cfg = load_config(
        str(synthetic / "base_cascade_rcnn_R_18_FPN_from_saver.yaml"),
        ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(tmp_path / "saver.pth")],
    )
    assert base_cfg.INPUT.MIN_SIZE_TEST == 3 * saver_cfg.INPUT.MIN_SIZE_TEST
    assert base_cfg.MODEL.RPN.POST_NMS_TOPK_TEST > saver_cfg.MODEL.RPN.POST_NMS_TOPK_TEST
    torch.manual_seed(1)  # another initialisation, so that equality below comes from the load
    base = build_model(base_cfg)
    load_weights(base, base_cfg)
    saver_state, base_state = saver.state_dict(), base.state_dict()
    assert base_state.keys() == saver_state.keys()
    for name, value in saver_state.items():
        assert torch.equal(base_state[name], value), name
