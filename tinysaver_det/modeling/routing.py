"""
Routing as small pure functions: each router's score, which images exit at the saver, and how the
two paths' outputs are merged back into input order. The meta-architecture (live, on a batch), the
calibration (on cached predictions) and the tests all use these, so the rules live in one place.
"""

import zlib
from typing import Dict, Hashable, List, Sequence, Tuple, TypeVar

import torch

# The threshold rule is a config value rule, defined in config.py (which cannot import modeling).
from ..config import check_threshold  # noqa: F401

T = TypeVar("T")

ROUTERS = ("evaluator", "confidence", "random", "oracle")


def check_router(router: str) -> str:
    if router not in ROUTERS:
        raise ValueError(f"MODEL.TINYSAVER.ROUTER must be one of {ROUTERS}, got {router!r}")
    return router


def exit_mask(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """
    Images with a finite score >= threshold exit. A NaN or infinite score never exits: an evaluator
    that breaks down must cost compute, not accuracy.
    """
    threshold = check_threshold(threshold)
    scores = torch.as_tensor(scores)
    # Compare in float64: against a float32 tensor the threshold would be rounded to float32 first,
    # and a score just below it could then exit.
    return torch.isfinite(scores) & (scores.double() >= threshold)


def merge_in_order(
    exited: Sequence[bool], saver_outputs: Sequence[T], base_outputs: Sequence[T]
) -> List[T]:
    """
    Put the outputs of both paths back in input order: image i takes saver_outputs[i] if it exited,
    else the next of base_outputs (which holds the routed images, in input order).
    """
    exited = [bool(e) for e in exited]
    if len(saver_outputs) != len(exited):
        raise ValueError(f"{len(saver_outputs)} saver outputs for {len(exited)} images")
    num_routed = exited.count(False)
    if len(base_outputs) != num_routed:
        raise ValueError(f"{len(base_outputs)} base outputs for {num_routed} routed images")
    base_iter = iter(base_outputs)
    return [saver_outputs[i] if e else next(base_iter) for i, e in enumerate(exited)]


def group_by_key(keys: Sequence[Hashable]) -> List[List[int]]:
    """
    Indices grouped by equal key, groups in order of first appearance. Running a detector on groups
    of images of one padded size (meta_arch.padded_shape) gives each image the padding it would
    get alone, so an image's result does not depend on the other images in its batch.
    """
    groups: Dict[Hashable, List[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    return list(groups.values())


def stable_uniform(key: str, seed: int) -> float:
    """A number in [0, 1) fixed by (seed, key): the random router's score, whatever the batching."""
    return zlib.crc32(f"{seed}:{key}".encode()) / 2**32


def image_key(dataset_dict: dict, index: int) -> str:
    """The identity the random router hashes: image_id, else file_name, else the batch position."""
    for k in ("image_id", "file_name"):
        if k in dataset_dict:
            return str(dataset_dict[k])
    return f"#{index}"


# One score function per router (higher = exit), for the live and the cached path. Scores are
# float64 on both: a threshold is chosen among cached scores, and a live score rounded to float32
# could fall below its own threshold.


def evaluator_scores(evaluator: torch.nn.Module, summary: torch.Tensor) -> torch.Tensor:
    """The evaluator head's scores of the saver's summaries (N, D), in eval mode, no gradients."""
    was_training = evaluator.training
    try:
        with torch.no_grad():
            return evaluator.eval().scores(summary).double()
    finally:
        evaluator.train(was_training)


def confidence_score(instances) -> torch.Tensor:
    """The saver's top detection score on an image: 0 when it detected nothing."""
    scores = instances.scores if instances.has("scores") else torch.zeros(0)
    return scores.max().float() if len(scores) else scores.new_zeros(()).float()


def confidence_scores(confidences: Sequence) -> torch.Tensor:
    """The confidence router: each image's `confidence_score` (0-d tensors or floats)."""
    return torch.tensor([float(c) for c in confidences], dtype=torch.float64)


def random_scores(keys: Sequence[str], seed: int) -> torch.Tensor:
    """The random router: a number fixed per image (`image_key`) and seed, whatever the batching."""
    return torch.tensor([stable_uniform(str(k), seed) for k in keys], dtype=torch.float64)


def base_gain(saver_ap: Sequence[float], base_ap: Sequence[float]) -> torch.Tensor:
    """The base's per-image AP gain over the saver (float64): the ap_gain target's one formula."""
    saver = torch.as_tensor(saver_ap, dtype=torch.float64)
    return torch.as_tensor(base_ap, dtype=torch.float64) - saver


def gain_oracle_scores(saver_ap: Sequence[float], base_ap: Sequence[float]) -> torch.Tensor:
    """
    The per-image-gain oracle: minus the base's per-image AP gain over the saver, so the images
    where the base gains least exit first. It needs ground truth: a bound, not a deployable router.
    """
    return -base_gain(saver_ap, base_ap)


def split_exits(exited: torch.Tensor) -> Tuple[List[int], List[int]]:
    """Indices of exited and routed images, each in input order."""
    exited = exited.tolist()
    return [i for i, e in enumerate(exited) if e], [i for i, e in enumerate(exited) if not e]
