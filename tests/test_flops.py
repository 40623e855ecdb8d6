"""Per-sub-model cost: the values, on the instant-test TinySaver model and hand-sized inputs."""

import math
import os

import numpy as np
import pytest
import torch

import tinysaver_det  # noqa: F401
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from tinysaver_det.config import load_config
from tinysaver_det.flops import detector_gflops, evaluator_gflops, tinysaver_costs

CONFIG = os.path.join(
    os.path.dirname(__file__), "..", "configs", "Synthetic", "tinysaver_instant_test.yaml"
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(load_config(CONFIG, ["MODEL.DEVICE", "cpu"])).eval()


def image(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
    return {"image": pixels, "height": h, "width": w}


def resized(x, min_size, max_size):
    """The image as detectron2's own test-time resize would give it to a detector of that size."""
    aug = T.ResizeShortestEdge(min_size, max_size)
    hwc = x["image"].permute(1, 2, 0).numpy()
    array = aug.get_transform(hwc).apply_image(hwc)
    return dict(x, image=torch.as_tensor(np.ascontiguousarray(array)).permute(2, 0, 1))


def test_evaluator_gflops_is_its_mlp_and_pooling(model):
    ev = model.evaluator
    assert ev.summary_dim == 684 and ev.in_strides == [4, 8, 16, 32, 64]
    assert model.saver_input_size == (48, 72)
    # A 96x128 image reaches the saver at 48x64: feature maps of 12x16, 6x8, 3x4, 2x2 and 1x1 cells,
    # 64 channels each, one mean and one max per element.
    pooling = 2 * 64 * (12 * 16 + 6 * 8 + 3 * 4 + 2 * 2 + 1 * 1)
    # BatchNorm (one per summary entry), then 684 -> 128 -> 128 -> 1, one multiply-add each.
    mlp = 684 + 684 * 128 + 128 * 128 + 128 * 1
    assert evaluator_gflops(model, [image(96, 128)]) * 1e9 == pytest.approx(pooling + mlp)


def test_tinysaver_costs_count_each_detector_at_its_own_resolution(model):
    inputs = [image(96, 128), image(150, 60, seed=1)]
    costs = tinysaver_costs(model, inputs)
    saver = [detector_gflops(model.saver, [resized(x, 48, 72)]) for x in inputs]
    base = [detector_gflops(model.base, [resized(x, 96, 144)]) for x in inputs]
    assert costs["saver_gflops"] == pytest.approx(np.mean(saver))  # the mean over images
    assert costs["base_gflops"] == pytest.approx(np.mean(base))
    assert costs["c_s"] == pytest.approx(np.mean(saver) / np.mean(base))
    assert costs["c_e"] == pytest.approx(costs["evaluator_gflops"] / np.mean(base))
    assert costs["num_images"] == 2
    # The saver sees a quarter of the base's pixels: its backbone costs about a quarter.
    assert 0.1 < costs["c_s"] < 0.5 and costs["c_e"] < 1e-3
    assert not math.isclose(saver[0], saver[1])  # sizes differ, so does the cost
