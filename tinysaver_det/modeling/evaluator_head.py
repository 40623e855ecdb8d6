"""
Evaluator heads: score each image by the predicted quality of the saver's detections on it.

A head has two halves so that evaluator inputs can be cached:
- `summarize(features, image_sizes, instances)`: parameter-free; turns the saver's backbone features
  and detections into one vector per image,
- `forward(summary)`: the learned part; returns the predicted quality per image,
and `scores(summary)` turns predictions into routing scores (higher = more likely to exit).
"""

import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.structures import Instances, pairwise_iou
from detectron2.utils.registry import Registry

EVALUATOR_HEAD_REGISTRY = Registry("TINYSAVER_EVALUATOR_HEAD")
EVALUATOR_HEAD_REGISTRY.__doc__ = """
Registry for TinySaver evaluator heads, which score each image from the saver's features and
detections. Called as `head(cfg, input_shape, num_classes)` where input_shape is the saver
backbone's `output_shape()`. A head implements `summarize`, `forward`, `scores` and `losses`.
"""

# What the head learns (evaluation/quality.py defines each).
TARGETS = ("saver_ap", "ap_gain", "marginal_ap")

# Detection-score levels at which the head counts the saver's detections.
SCORE_LEVELS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# Box side relative to the image side: bucket edges (tiny, small, medium, large).
SIZE_EDGES = (0.05, 0.15, 0.3)


def build_evaluator_head(cfg, input_shape: Dict[str, ShapeSpec], num_classes: int) -> nn.Module:
    """Build the head named by MODEL.TINYSAVER.EVALUATOR.NAME."""
    name = cfg.MODEL.TINYSAVER.EVALUATOR.NAME
    return EVALUATOR_HEAD_REGISTRY.get(name)(cfg, input_shape, num_classes)


def pool_valid_region(
    feature: torch.Tensor, image_sizes: Sequence[Tuple[int, int]], stride: int
) -> torch.Tensor:
    """
    Mean and max of each channel over the part of a padded feature map that covers the image
    (padding would otherwise leak batch composition into the summary). Returns (N, 2C).
    """
    rows = []
    for i, (h, w) in enumerate(image_sizes):
        region = feature[i, :, : max(1, math.ceil(h / stride)), : max(1, math.ceil(w / stride))]
        region = region.flatten(1)
        rows.append(torch.cat([region.mean(dim=1), region.amax(dim=1)]))
    return torch.stack(rows)


def detection_statistics(instances: Instances, num_classes: int, top_k: int) -> torch.Tensor:
    """
    A fixed-length description of one image's detections (post-processed, in output pixels):
    top-k scores, counts above score levels, score-weighted size mix, per-class top score,
    overlap between confident boxes of different classes (class confusion), and image size.
    """
    device = instances.scores.device if len(instances) else torch.device("cpu")
    h, w = instances.image_size
    scores = instances.scores.float() if len(instances) else torch.zeros(0, device=device)
    classes = (
        instances.pred_classes
        if len(instances)
        else torch.zeros(0, dtype=torch.long, device=device)
    )

    top = torch.zeros(top_k, device=device)
    sorted_scores = scores.sort(descending=True).values[:top_k]
    top[: len(sorted_scores)] = sorted_scores

    levels = torch.tensor(SCORE_LEVELS, device=device)
    counts = torch.log1p((scores[None, :] >= levels[:, None]).sum(dim=1).float())

    size_mix = torch.zeros(len(SIZE_EDGES) + 1, device=device)
    per_class = torch.zeros(num_classes, device=device)
    confusion = torch.zeros(2, device=device)
    if len(instances):
        boxes = instances.pred_boxes
        rel_side = boxes.area().clamp(min=0).sqrt() / math.sqrt(h * w)
        bucket = torch.bucketize(rel_side, torch.tensor(SIZE_EDGES, device=device))
        size_mix.index_add_(0, bucket, scores)
        size_mix = size_mix / scores.sum().clamp(min=1e-6)
        per_class.scatter_reduce_(0, classes.clamp(0, num_classes - 1), scores, reduce="amax")
        confident = scores >= 0.3
        if confident.sum() > 1:
            iou = pairwise_iou(boxes[confident], boxes[confident])
            other_class = classes[confident][:, None] != classes[confident][None, :]
            cross = (iou * other_class).amax(dim=1)
            confusion = torch.stack([cross.mean(), (cross > 0.5).float().mean()])
    image = torch.tensor([math.log(h), math.log(w)], device=device)
    return torch.cat([top, counts, size_mix, per_class, confusion, image])


def statistics_dim(num_classes: int, top_k: int) -> int:
    return top_k + len(SCORE_LEVELS) + len(SIZE_EDGES) + 1 + num_classes + 2 + 2


def pairwise_rank_loss(
    pred: torch.Tensor, target: torch.Tensor, margin: float = 0.0
) -> torch.Tensor:
    """
    Logistic loss on every pair of images in the batch whose targets differ by more than `margin`:
    routing needs the order, and the order of two targets within noise of each other is noise.
    """
    diff_t = target[:, None] - target[None, :]
    diff_p = pred[:, None] - pred[None, :]
    pairs = diff_t > max(margin, 1e-6)
    if not pairs.any():
        return pred.sum() * 0.0
    return F.softplus(-diff_p[pairs]).mean()


@EVALUATOR_HEAD_REGISTRY.register()
class DetectionQualityHead(nn.Module):
    """
    The default evaluator: pooled saver features (mean and max per FPN level) plus statistics of the
    saver's detections, normalised by a BatchNorm, through a small MLP to one number per image: the
    predicted per-image AP of the saver ("saver_ap"), the predicted AP gain of the base ("ap_gain"),
    or the predicted effect on the dataset's AP of letting the image exit ("marginal_ap").
    """

    @configurable
    def __init__(
        self,
        *,
        in_features: List[str],
        in_channels: List[int],
        in_strides: List[int],
        num_classes: int,
        top_k: int = 20,
        hidden_dim: int = 128,
        num_layers: int = 2,
        dropout: float = 0.1,
        target: str = "saver_ap",
        rank_loss_weight: float = 1.0,
        rank_margin: float = 0.0,
    ):
        """
        Args:
            in_features: names of the saver backbone outputs to pool.
            in_channels, in_strides: their channels and strides.
            num_classes: the saver's number of classes.
            top_k: how many sorted detection scores the head sees.
            hidden_dim, num_layers, dropout: the MLP.
            target: one of TARGETS ("ap_gain": the routing score is minus the predicted gain).
            rank_loss_weight: weight of the pairwise ranking loss beside the regression loss.
            rank_margin: pairs whose targets differ by at most this much are left out of it.
        """
        super().__init__()
        if target not in TARGETS:
            raise ValueError(
                f"MODEL.TINYSAVER.EVALUATOR.TARGET must be one of {TARGETS}, got {target!r}"
            )
        self.in_features = list(in_features)
        self.in_strides = list(in_strides)
        self.num_classes = num_classes
        self.top_k = top_k
        self.target = target
        self.rank_loss_weight = rank_loss_weight
        self.rank_margin = rank_margin
        self.summary_dim = 2 * sum(in_channels) + statistics_dim(num_classes, top_k)

        # Feature scales differ by orders of magnitude between pooled activations and counts.
        self.input_norm = nn.BatchNorm1d(self.summary_dim, affine=False)
        layers, dim = [], self.summary_dim
        for _ in range(num_layers):
            layers += [nn.Linear(dim, hidden_dim), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            dim = hidden_dim
        layers.append(nn.Linear(dim, 1))
        self.mlp = nn.Sequential(*layers)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec], num_classes: int):
        ev = cfg.MODEL.TINYSAVER.EVALUATOR
        names = sorted(input_shape, key=lambda k: input_shape[k].stride)
        return {
            "in_features": names,
            "in_channels": [input_shape[k].channels for k in names],
            "in_strides": [input_shape[k].stride for k in names],
            "num_classes": num_classes,
            "top_k": ev.TOP_K,
            "hidden_dim": ev.HIDDEN_DIM,
            "num_layers": ev.NUM_LAYERS,
            "dropout": ev.DROPOUT,
            "target": ev.TARGET,
            "rank_loss_weight": ev.RANK_LOSS_WEIGHT,
            "rank_margin": ev.RANK_MARGIN,
        }

    @torch.no_grad()
    def summarize(
        self,
        features: Dict[str, torch.Tensor],
        image_sizes: Sequence[Tuple[int, int]],
        instances: Sequence[Instances],
    ) -> torch.Tensor:
        """
        Args:
            features: the saver backbone's outputs for a batch (padded).
            image_sizes: (h, w) of each image inside the padded batch tensor.
            instances: the saver's post-processed detections of each image.
        Returns:
            (N, summary_dim) float tensor.
        """
        pooled = [
            pool_valid_region(features[f], image_sizes, s)
            for f, s in zip(self.in_features, self.in_strides)
        ]
        stats = torch.stack(
            [detection_statistics(x, self.num_classes, self.top_k) for x in instances]
        )
        return torch.cat(pooled + [stats.to(pooled[0].device)], dim=1).float()

    def forward(self, summary: torch.Tensor) -> torch.Tensor:
        """Predicted quality (the training target's units) per image, shape (N,)."""
        return self.mlp(self.input_norm(summary)).squeeze(1)

    def scores(self, summary: torch.Tensor) -> torch.Tensor:
        """
        Routing scores: higher means the saver's detections are good enough to exit. In eval mode
        each image is scored on its own: a matrix product over N rows can round differently from one
        over a single row, and a score at the threshold would then route by batch composition (and
        the model and the calibration, which score different batches, would disagree).
        """
        if self.training or len(summary) == 0:
            pred = self(summary)
        else:
            pred = torch.cat([self(row[None]) for row in summary])
        return -pred if self.target == "ap_gain" else pred

    def losses(self, pred: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        losses = {"loss_quality": F.smooth_l1_loss(pred, target, beta=0.1)}
        if self.rank_loss_weight > 0:
            rank_loss = pairwise_rank_loss(pred, target, self.rank_margin)
            losses["loss_quality_rank"] = self.rank_loss_weight * rank_loss
        return losses
