"""Meta-architecture, evaluator heads and routing."""

# Importing these modules registers TinySaverRCNN, the evaluator heads and the RegNet backbone.
from .backbone import build_regnet_fpn_backbone
from .evaluator_head import EVALUATOR_HEAD_REGISTRY, DetectionQualityHead, build_evaluator_head
from .meta_arch import TinySaverRCNN
from .routing import ROUTERS, exit_mask, merge_in_order

__all__ = [
    "build_regnet_fpn_backbone",
    "EVALUATOR_HEAD_REGISTRY",
    "DetectionQualityHead",
    "build_evaluator_head",
    "TinySaverRCNN",
    "ROUTERS",
    "exit_mask",
    "merge_in_order",
]
