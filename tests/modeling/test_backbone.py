"""The registered RegNet-FPN backbone: builds from a yacs config, trains, infers, and is light."""

import os

import torch

import tinysaver_det  # noqa: F401  (registers build_regnet_fpn_backbone)
from detectron2.modeling import build_backbone, build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.analysis import FlopCountAnalysis
from detectron2.utils.events import EventStorage
from tinysaver_det.config import load_config

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "BCCD")
SMALL = [
    "MODEL.DEVICE",
    "cpu",
    "MODEL.TINYSAVER.DATA.COCO_DATASETS",
    "[]",
    "DATASETS.TRAIN",
    "()",
    "DATASETS.TEST",
    "()",
]


def config(name, opts=()):
    return load_config(os.path.join(CONFIGS, name), SMALL + list(opts))


def test_regnet_fpn_levels_strides_and_channels():
    cfg = config("saver_faster_rcnn_RegNetX_200MF_FPN.yaml")
    backbone = build_backbone(cfg)
    shapes = backbone.output_shape()
    strides = {k: v.stride for k, v in shapes.items()}
    assert strides == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    assert all(v.channels == 64 for v in shapes.values())
    out = backbone(torch.zeros(1, 3, 96, 128))
    assert out["p2"].shape == (1, 64, 24, 32) and out["p6"].shape == (1, 64, 2, 2)
    # RegNetX-200MF's stage widths, as published (pycls): 24, 56, 152, 368.
    bottom_up = backbone.bottom_up.output_shape()
    assert [bottom_up[f"s{i}"].channels for i in range(1, 5)] == [24, 56, 152, 368]


def test_regnet_saver_trains_and_infers_on_odd_sizes():
    torch.manual_seed(0)
    cfg = config(
        "saver_faster_rcnn_RegNetX_200MF_FPN.yaml",
        ["INPUT.MIN_SIZE_TEST", "72", "INPUT.MAX_SIZE_TEST", "100"],
    )
    model = build_model(cfg)
    inst = Instances(
        (70, 90),
        gt_boxes=Boxes(torch.tensor([[5.0, 6.0, 40.0, 50.0]])),
        gt_classes=torch.tensor([1]),
    )
    batch = [{"image": torch.randint(0, 256, (3, 70, 90), dtype=torch.uint8), "instances": inst}]
    with EventStorage():
        losses = model(batch)
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert all(p.grad is not None for p in model.backbone.bottom_up.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        (out,) = model(
            [
                {
                    "image": torch.randint(0, 256, (3, 53, 77), dtype=torch.uint8),
                    "height": 106,
                    "width": 154,
                }
            ]
        )
    assert out["instances"].image_size == (106, 154)


def test_regnet_saver_is_several_times_cheaper_than_the_base():
    inputs = [{"image": torch.randint(0, 256, (3, 240, 320), dtype=torch.uint8)}]

    def gflops(name):
        model = build_model(config(name)).eval()
        counter = FlopCountAnalysis(model.backbone, model.preprocess_image(inputs).tensor)
        counter.unsupported_ops_warnings(False)
        return counter.total() / 1e9

    saver = gflops("saver_faster_rcnn_RegNetX_200MF_FPN.yaml")
    base = gflops("base_cascade_rcnn_R_18_FPN.yaml")
    assert saver < base / 4, (saver, base)
