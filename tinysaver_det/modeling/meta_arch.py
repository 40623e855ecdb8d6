"""
TinySaverRCNN: the saver runs on every image, the evaluator head scores its detections, and only
the images scoring below the threshold go, as one sub-batch, to the base (a Cascade R-CNN).
"""

import logging
from contextlib import contextmanager
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data.transforms import ResizeShortestEdge
from detectron2.modeling import META_ARCH_REGISTRY, build_model
from detectron2.utils.events import get_event_storage

from ..config import load_sub_config
from ..metrics.per_image import per_image_quality
from .evaluator_head import build_evaluator_head
from .routing import (
    base_gain,
    check_router,
    check_threshold,
    confidence_score,
    confidence_scores,
    evaluator_scores,
    exit_mask,
    gain_oracle_scores,
    group_by_key,
    image_key,
    merge_in_order,
    random_scores,
    split_exits,
)

logger = logging.getLogger(__name__)

# Keys of a dataset dict that carry precomputed evaluator inputs (see engine/output_cache.py).
SUMMARY_KEY = "tinysaver_summary"
TARGET_KEY = "tinysaver_target"


def num_classes_of(cfg) -> int:
    """The number of classes a detectron2 detector config predicts."""
    if cfg.MODEL.META_ARCHITECTURE == "RetinaNet":
        return cfg.MODEL.RETINANET.NUM_CLASSES
    return cfg.MODEL.ROI_HEADS.NUM_CLASSES


def thing_classes_of(cfg) -> Optional[List[str]]:
    """The class names of a config's training set, where its metadata knows them."""
    for name in cfg.DATASETS.TRAIN:
        classes = MetadataCatalog.get(name).get("thing_classes", None)
        if classes:
            return list(classes)
    return None


def check_same_classes(saver_cfg, base_cfg) -> None:
    """Saver and base must predict the same classes, or merging their outputs is meaningless."""
    n_saver, n_base = num_classes_of(saver_cfg), num_classes_of(base_cfg)
    if n_saver != n_base:
        raise ValueError(
            f"The saver predicts {n_saver} classes and the base {n_base} "
            "(MODEL.RETINANET.NUM_CLASSES / MODEL.ROI_HEADS.NUM_CLASSES): they must agree"
        )
    c_saver, c_base = thing_classes_of(saver_cfg), thing_classes_of(base_cfg)
    if c_saver and c_base and c_saver != c_base:
        raise ValueError(
            f"The saver's training set {saver_cfg.DATASETS.TRAIN} and the base's "
            f"{base_cfg.DATASETS.TRAIN} have different thing_classes: the two detectors must "
            "share one label space"
        )


def resize_inputs(
    batched_inputs: Sequence[dict], size: Tuple[int, int], flip_channels: bool = False
) -> List[dict]:
    """
    Resize each image tensor to what a sub-model's own test-time ResizeShortestEdge(min, max) would
    give, so a saver can run at a lower resolution than the base. Outputs stay at the caller's
    resolution: a missing "height"/"width" is set to the tensor's size before resizing.
    flip_channels: the sub-model expects the other channel order (RGB vs BGR) than the inputs.
    """
    min_size, max_size = size
    out = []
    for x in batched_inputs:
        image = x["image"].flip(0) if flip_channels else x["image"]
        h, w = image.shape[-2:]
        y = dict(x, image=image)
        y.setdefault("height", h)
        y.setdefault("width", w)
        if min_size > 0:
            new_hw = ResizeShortestEdge.get_output_shape(h, w, min_size, max_size)
            if tuple(new_hw) != (h, w):
                y["image"] = F.interpolate(
                    image[None].float(),
                    size=new_hw,
                    mode="bilinear",
                    align_corners=False,
                    antialias=True,
                )[0]
        out.append(y)
    return out


def padded_shape(detector: nn.Module, image: torch.Tensor) -> Tuple[int, int]:
    """
    The shape detectron2's ImageList.from_tensors pads `image` to when the detector runs on it alone
    (its backbone's size_divisibility and padding_constraints). Images of one padded shape can share
    a batch and each still gets exactly the padding it gets alone; a detector without a detectron2
    backbone is grouped by the exact shape.
    """
    h, w = (int(v) for v in image.shape[-2:])
    backbone = getattr(detector, "backbone", None)
    if backbone is None:
        return h, w
    constraints = getattr(backbone, "padding_constraints", None) or {}
    if constraints.get("square_size", 0) > 0:
        h = w = constraints["square_size"]
    stride = constraints.get("size_divisibility", getattr(backbone, "size_divisibility", 0))
    if stride > 1:
        h, w = -(-h // stride) * stride, -(-w // stride) * stride
    return h, w


def channels_differ(parent_format: str, sub_format: str) -> bool:
    """Whether a sub-model needs the channels reversed (only RGB <-> BGR is supported)."""
    if parent_format == sub_format:
        return False
    if {parent_format, sub_format} == {"RGB", "BGR"}:
        return True
    raise ValueError(
        f"INPUT.FORMAT {sub_format!r} of a sub-model cannot be derived from the TinySaver "
        f"config's {parent_format!r}: use the same format, or RGB and BGR"
    )


@contextmanager
def captured_output(module: nn.Module):
    """Record what `module` returns during the block (the saver backbone's features)."""
    box = {}
    handle = module.register_forward_hook(lambda _m, _i, output: box.__setitem__("output", output))
    try:
        yield box
    finally:
        handle.remove()


@META_ARCH_REGISTRY.register()
class TinySaverRCNN(nn.Module):
    """
    A saver, an evaluator head and a base. In inference, returns detectron2's standard
    `[{"instances": Instances, "tinysaver": {...}}]` in input order; the extra key holds the
    routing facts of each image (score, exited, path). In training, trains only the evaluator:
    saver and base are frozen and stay in eval mode.
    """

    @configurable
    def __init__(
        self,
        *,
        saver: nn.Module,
        base: nn.Module,
        evaluator: nn.Module,
        saver_input_size: Tuple[int, int] = (0, 0),
        base_input_size: Tuple[int, int] = (0, 0),
        saver_flip_channels: bool = False,
        base_flip_channels: bool = False,
        threshold: float = 0.5,
        router: str = "evaluator",
        random_seed: int = 0,
    ):
        """
        Args:
            saver: the small detector (any detectron2 model with a `.backbone`).
            base: the large detector.
            evaluator: a head from EVALUATOR_HEAD_REGISTRY built for the saver's backbone.
            saver_input_size, base_input_size: (MIN_SIZE_TEST, MAX_SIZE_TEST) of each sub-model;
                images are resized to it before that sub-model runs ((0, 0): as given).
            saver_flip_channels, base_flip_channels: reverse the channel order for that sub-model
                (its INPUT.FORMAT differs from the inputs', e.g. an RGB saver beside a BGR base).
            threshold: images with score >= threshold exit at the saver.
            router: "evaluator", "confidence", "random" or "oracle".
            random_seed: seed of the random router.
        """
        super().__init__()
        self.saver = saver
        self.base = base
        self.evaluator = evaluator
        # Frozen: only the evaluator ever trains inside this model.
        self.saver.requires_grad_(False).eval()
        self.base.requires_grad_(False).eval()
        self.saver_input_size = tuple(saver_input_size)
        self.base_input_size = tuple(base_input_size)
        self.saver_flip_channels = saver_flip_channels
        self.base_flip_channels = base_flip_channels
        self.threshold = threshold
        self.router = router
        self.random_seed = random_seed

    @classmethod
    def from_config(cls, cfg):
        saver_cfg = load_sub_config(cfg, "SAVER")
        base_cfg = load_sub_config(cfg, "BASE")
        check_same_classes(saver_cfg, base_cfg)
        saver = build_model(saver_cfg)
        base = build_model(base_cfg)
        evaluator = build_evaluator_head(
            cfg, saver.backbone.output_shape(), num_classes_of(saver_cfg)
        )
        evaluator.to(torch.device(cfg.MODEL.DEVICE))
        ts = cfg.MODEL.TINYSAVER
        return {
            "saver": saver,
            "base": base,
            "evaluator": evaluator,
            "saver_input_size": (saver_cfg.INPUT.MIN_SIZE_TEST, saver_cfg.INPUT.MAX_SIZE_TEST),
            "base_input_size": (base_cfg.INPUT.MIN_SIZE_TEST, base_cfg.INPUT.MAX_SIZE_TEST),
            "saver_flip_channels": channels_differ(cfg.INPUT.FORMAT, saver_cfg.INPUT.FORMAT),
            "base_flip_channels": channels_differ(cfg.INPUT.FORMAT, base_cfg.INPUT.FORMAT),
            # load_config has put CALIBRATION_FILE's threshold here (or an explicit one over it).
            "threshold": ts.THRESHOLD,
            "router": ts.ROUTER,
            "random_seed": ts.RANDOM_SEED,
        }

    # --- settings that can change on a built model ---------------------------------------------
    @property
    def threshold(self) -> float:
        return self._threshold

    @threshold.setter
    def threshold(self, value) -> None:
        self._threshold = check_threshold(value)

    @property
    def router(self) -> str:
        return self._router

    @router.setter
    def router(self, value: str) -> None:
        self._router = check_router(value)

    @property
    def device(self) -> torch.device:
        return next(self.evaluator.parameters()).device

    def train(self, mode: bool = True):
        # Frozen sub-models stay in eval mode (detectron2 detectors refuse inference in training
        # mode).
        super().train(mode)
        self.saver.eval()
        self.base.eval()
        return self

    # --- the two detectors ----------------------------------------------------------------------
    def saver_inputs(self, batched_inputs: Sequence[dict]) -> List[dict]:
        """The inputs as the saver takes them: its own test size and channel order."""
        return resize_inputs(batched_inputs, self.saver_input_size, self.saver_flip_channels)

    def base_inputs(self, batched_inputs: Sequence[dict]) -> List[dict]:
        """The inputs as the base takes them: its own test size and channel order."""
        return resize_inputs(batched_inputs, self.base_input_size, self.base_flip_channels)

    def run_saver(self, batched_inputs: Sequence[dict]) -> Tuple[List[dict], torch.Tensor]:
        """
        Run the saver on every image, in groups of equal padded size (padded_shape), so each image
        gets the padding it gets alone. Returns its outputs (input order) and the evaluator's
        summary of each image, (N, D).
        """
        inputs = self.saver_inputs(batched_inputs)
        outputs: List[Optional[dict]] = [None] * len(inputs)
        summary: List[Optional[torch.Tensor]] = [None] * len(inputs)
        for group in group_by_key([padded_shape(self.saver, x["image"]) for x in inputs]):
            sub = [inputs[i] for i in group]
            with torch.no_grad(), captured_output(self.saver.backbone) as features:
                results = self.saver(sub)
            rows = self.evaluator.summarize(
                features["output"],
                [tuple(x["image"].shape[-2:]) for x in sub],
                [r["instances"] for r in results],
            )
            for j, i in enumerate(group):
                outputs[i], summary[i] = results[j], rows[j]
        return outputs, torch.stack(summary)

    def run_base(self, batched_inputs: Sequence[dict]) -> List[dict]:
        """Run the base, in groups of equal padded size (padded_shape); outputs in input order."""
        inputs = self.base_inputs(batched_inputs)
        outputs: List[Optional[dict]] = [None] * len(inputs)
        for group in group_by_key([padded_shape(self.base, x["image"]) for x in inputs]):
            with torch.no_grad():
                results = self.base([inputs[i] for i in group])
            for j, i in enumerate(group):
                outputs[i] = results[j]
        return outputs

    # --- routing ----------------------------------------------------------------------------------
    def routing_scores(
        self,
        batched_inputs: Sequence[dict],
        saver_outputs: Sequence[dict],
        summary: torch.Tensor,
        base_outputs: Optional[Sequence[dict]] = None,
    ) -> torch.Tensor:
        """One score per image under the current router (higher = exit), float64 (routing.py)."""
        if self.router == "evaluator":
            scores = evaluator_scores(self.evaluator, summary)
        elif self.router == "confidence":
            scores = confidence_scores([confidence_score(o["instances"]) for o in saver_outputs])
        elif self.router == "random":
            keys = [image_key(x, i) for i, x in enumerate(batched_inputs)]
            scores = random_scores(keys, self.random_seed)
        else:
            saver_ap, base_ap = self.per_image_aps(batched_inputs, saver_outputs, base_outputs)
            scores = gain_oracle_scores(saver_ap, base_ap)
        return scores.to(self.device)

    @staticmethod
    def per_image_aps(
        batched_inputs, saver_outputs, base_outputs
    ) -> Tuple[List[float], List[float]]:
        """Per-image AP of the saver's and the base's outputs against the inputs' ground truth."""
        if any("instances" not in x for x in batched_inputs):
            raise ValueError(
                "ROUTER 'oracle' needs ground truth: the inputs must carry 'instances' (the test "
                "loader of tools/train_net.py keeps them for the oracle: "
                "data.checks.build_test_mapper)"
            )
        gts = [gt_in_output_frame(x) for x in batched_inputs]
        saver = [per_image_quality(gt, s["instances"]) for gt, s in zip(gts, saver_outputs)]
        base = [per_image_quality(gt, b["instances"]) for gt, b in zip(gts, base_outputs)]
        return saver, base

    def inference(self, batched_inputs: Sequence[dict]) -> List[dict]:
        saver_outputs, summary = self.run_saver(batched_inputs)
        base_all = self.run_base(batched_inputs) if self.router == "oracle" else None
        scores = self.routing_scores(batched_inputs, saver_outputs, summary, base_all)
        exited = exit_mask(scores, self.threshold)
        exit_ids, routed_ids = split_exits(exited)
        if base_all is not None:
            base_outputs = [base_all[i] for i in routed_ids]
        else:
            # The base does not run at all when nothing is routed.
            routed = [batched_inputs[i] for i in routed_ids]
            base_outputs = self.run_base(routed) if routed else []
        merged = merge_in_order(exited.tolist(), saver_outputs, base_outputs)
        results = []
        for out, score, ex in zip(merged, scores.tolist(), exited.tolist()):
            facts = {
                "score": score,
                "exited": ex,
                "path": "saver" if ex else "base",
                "router": self.router,
            }
            results.append({"instances": out["instances"], "tinysaver": facts})
        return results

    # --- training: the evaluator only ----------------------------------------------------------
    def forward(self, batched_inputs: List[dict]):
        if not self.training:
            return self.inference(batched_inputs)
        summary, target = self.evaluator_training_inputs(batched_inputs)
        pred = self.evaluator(summary)
        losses = self.evaluator.losses(pred, target)
        get_event_storage().put_scalar("tinysaver/target_mean", float(target.mean()))
        return losses

    def evaluator_training_inputs(
        self, batched_inputs: Sequence[dict]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Summaries and quality targets for a training batch: precomputed ones where the dataset dicts
        carry them (the output cache), else computed now with the frozen saver (and base for
        ap_gain) against each image's ground truth "instances".
        """
        if all(SUMMARY_KEY in x for x in batched_inputs):
            summary = torch.stack([torch.as_tensor(x[SUMMARY_KEY]) for x in batched_inputs])
            summary = summary.to(self.device)
            target = torch.tensor(
                [float(x[TARGET_KEY]) for x in batched_inputs], device=self.device
            )
            return summary.float(), target
        # Without height/width, outputs come back in the frame of the (augmented) input tensor,
        # which is the frame of its ground truth.
        plain = [
            {k: v for k, v in x.items() if k not in ("height", "width")} for x in batched_inputs
        ]
        saver_outputs, summary = self.run_saver(plain)
        target = [
            per_image_quality(x["instances"], s["instances"]) for x, s in zip(plain, saver_outputs)
        ]
        if self.evaluator.target == "ap_gain":
            base_outputs = self.run_base(plain)
            base_ap = [
                per_image_quality(x["instances"], b["instances"])
                for x, b in zip(plain, base_outputs)
            ]
            target = base_gain(target, base_ap).tolist()
        return summary, torch.tensor(target, device=self.device, dtype=torch.float32)


def gt_in_output_frame(dataset_dict: dict):
    """Ground-truth instances scaled from the input tensor's frame to the output height/width."""
    gt = dataset_dict["instances"]
    h, w = dataset_dict["image"].shape[-2:]
    out_h, out_w = dataset_dict.get("height", h), dataset_dict.get("width", w)
    if (out_h, out_w) == (h, w):
        return gt
    from detectron2.structures import Boxes, Instances

    scaled = Instances((out_h, out_w))
    boxes = gt.gt_boxes.tensor.clone()
    boxes[:, 0::2] *= out_w / w
    boxes[:, 1::2] *= out_h / h
    scaled.gt_boxes = Boxes(boxes)
    scaled.gt_classes = gt.gt_classes
    return scaled
