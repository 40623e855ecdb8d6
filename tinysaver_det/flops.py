"""
Cost of each sub-model, measured with detectron2's FlopCountAnalysis on real inputs. Tracing only
follows the branch taken, so saver, evaluator and base are counted separately and combined by the
routing formula: GFLOPs(r) = F_saver + F_evaluator + (1 - r) * F_base.
"""

import logging
import math
from typing import Dict, Sequence

import numpy as np
import torch

from detectron2.utils.analysis import FlopCountAnalysis

logger = logging.getLogger(__name__)


def detector_gflops(model: torch.nn.Module, batched_inputs: Sequence[dict]) -> float:
    """Mean GFLOPs per image of a detectron2 detector (eval mode), one image at a time."""
    values = []
    for x in batched_inputs:
        counter = FlopCountAnalysis(model, [x])
        counter.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        values.append(counter.total() / 1e9)
    return float(np.mean(values))


def evaluator_gflops(model, batched_inputs: Sequence[dict]) -> float:
    """
    Mean GFLOPs per image of the evaluator: its MLP (counted by FlopCountAnalysis) plus the pooling
    of the saver's features (one mean and one max per element of each pooled map, counted directly:
    tracing cannot follow the per-image crops).
    """
    values = []
    for x in batched_inputs:
        _, summary = model.run_saver([x])
        counter = FlopCountAnalysis(model.evaluator, (summary,))
        counter.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        h, w = model.saver_inputs([x])[0]["image"].shape[-2:]
        pooled = sum(
            2 * c * math.ceil(h / s) * math.ceil(w / s)
            for c, s in zip(_channels(model), model.evaluator.in_strides)
        )
        values.append((counter.total() + pooled) / 1e9)
    return float(np.mean(values))


def _channels(model):
    shapes = model.saver.backbone.output_shape()
    return [shapes[f].channels for f in model.evaluator.in_features]


@torch.no_grad()
def tinysaver_costs(model, batched_inputs: Sequence[dict]) -> Dict[str, float]:
    """
    GFLOPs per image of saver, evaluator and base on the given (test-mapped) inputs, and their
    ratios to the base: c_s = F_saver / F_base, c_e = F_evaluator / F_base.
    """
    was_training = model.training
    model.eval()
    saver = detector_gflops(model.saver, model.saver_inputs(batched_inputs))
    base = detector_gflops(model.base, model.base_inputs(batched_inputs))
    evaluator = evaluator_gflops(model, batched_inputs)
    model.train(was_training)
    return {
        "saver_gflops": saver,
        "evaluator_gflops": evaluator,
        "base_gflops": base,
        "c_s": saver / base,
        "c_e": evaluator / base,
        "num_images": len(batched_inputs),
    }


def routed_gflops(costs: Dict[str, float], exit_rate: float) -> float:
    """Expected GFLOPs per image at exit rate r: saver + evaluator + (1 - r) * base."""
    always = costs["saver_gflops"] + costs["evaluator_gflops"]
    return always + (1.0 - exit_rate) * costs["base_gflops"]


def compute_saved(costs: Dict[str, float], exit_rate: float) -> float:
    """1 - C(r), C(r) = c_s + c_e + (1 - r): the share of the base's compute saved."""
    return 1.0 - routed_gflops(costs, exit_rate) / costs["base_gflops"]


def first_test_inputs(cfg, dataset_name: str, num_images: int):
    """The first `num_images` images of a dataset through the test-time mapper (inputs to count)."""
    from detectron2.data import build_detection_test_loader

    loader = build_detection_test_loader(cfg, dataset_name)
    out = []
    for batch in loader:
        out.extend(batch)
        if len(out) >= num_images:
            break
    return out[:num_images]
