"""
Bootstrap intervals over images for the figures of a routed model on one split: the AP of the base,
the saver and the routed model, the AP drop, the exit rate and the compute saved.

On a few hundred images the AP of a fixed exit rate moves by about a third of a point between
resamples, as much as the targets it is compared with: a figure without its interval says little.
Each resample draws the split's images with replacement (a drawn image counts as often as it is
drawn, as a duplicated image would in COCOeval) and recomputes every figure exactly (SweepTable,
which equals MatchTable and pycocotools).
"""

from typing import Dict, Iterator, Sequence, Tuple

import numpy as np

from ..flops import compute_saved
from ..metrics.coco_fast import ImageDets, ImageGT
from .coco_sweep import SweepTable, exit_steps

FIGURES = ("AP_base", "AP_saver", "AP_routed", "AP_drop", "exit_rate", "compute_saved")


def resampled_tables(
    gts: Sequence[ImageGT],
    saver: Sequence[ImageDets],
    base: Sequence[ImageDets],
    samples: int,
    seed: int = 0,
) -> Iterator[Tuple[np.ndarray, SweepTable]]:
    """
    `samples` resamples of the images with replacement, each as (sorted image indices, its
    SweepTable): matched once, then any number of exit sets or sweeps per resample. Sorting keeps
    ascending image-id order (pycocotools' tie order) when the images come in it.
    """
    if samples < 1:  # checked on the call, not on the first resample
        raise ValueError(f"bootstrap samples must be >= 1, got {samples}")
    rng = np.random.default_rng(seed)
    indices = (np.sort(rng.integers(0, len(gts), len(gts))) for _ in range(samples))
    return (
        (
            idx,
            SweepTable.build(
                [gts[i] for i in idx], [saver[i] for i in idx], [base[i] for i in idx]
            ),
        )
        for idx in indices
    )


def bootstrap_routing(
    gts: Sequence[ImageGT],
    saver: Sequence[ImageDets],
    base: Sequence[ImageDets],
    exited: np.ndarray,
    costs: Dict[str, float],
    *,
    samples: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> Dict[str, Tuple[float, float]]:
    """
    Percentile intervals (`level`, two-sided) of :data:`FIGURES` over `samples` resamples of the
    images. Images must come in ascending image-id order (MatchTable's tie order), which a sorted
    resample keeps.
    """
    return bootstrap_routers(
        gts, saver, base, {"routed": exited}, costs, samples=samples, level=level, seed=seed
    )["routed"]


def bootstrap_routers(
    gts: Sequence[ImageGT],
    saver: Sequence[ImageDets],
    base: Sequence[ImageDets],
    exits: Dict[str, np.ndarray],
    costs: Dict[str, float],
    *,
    samples: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> Dict[str, Dict[str, Tuple[float, float]]]:
    """
    bootstrap_routing for several exit sets at once (router -> exited mask), on the same resamples:
    each resample is matched once (SweepTable) and every router costs one metric evaluation.
    """
    exits = {r: np.asarray(e, dtype=bool) for r, e in exits.items()}
    draws = {r: {k: [] for k in FIGURES} for r in exits}
    for idx, table in resampled_tables(gts, saver, base, samples, seed):
        ap_base, ap_saver = table.source_metrics("base")["AP"], table.source_metrics("saver")["AP"]
        for r, exited in exits.items():
            e = exited[idx]
            routed = table.coco_metrics(np.where(e, 0, 1))["AP"]
            rate = float(np.mean(e)) if len(e) else 0.0
            for k, v in zip(
                FIGURES,
                (ap_base, ap_saver, routed, ap_base - routed, rate, compute_saved(costs, rate)),
            ):
                draws[r][k].append(v)
    tail = 100 * (1 - level) / 2
    out = {}
    for r, figures in draws.items():
        out[r] = {}
        for k, values in figures.items():
            values = np.asarray(values, dtype=np.float64)
            values = values[np.isfinite(values)]
            out[r][k] = (
                (float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail)))
                if len(values)
                else (float("nan"), float("nan"))
            )
    return out


def bootstrap_ap_drops(
    gts: Sequence[ImageGT],
    saver: Sequence[ImageDets],
    base: Sequence[ImageDets],
    scores: Dict[str, np.ndarray],
    thresholds: Dict[str, Sequence[float]],
    *,
    samples: int = 100,
    seed: int = 0,
) -> Dict[str, np.ndarray]:
    """
    AP drops (base AP - routed AP, points) of each router's thresholds over `samples` resamples of
    the images: router -> array (samples, len(thresholds[router])). A resample is matched once and
    swept incrementally for every router (SweepTable). Images in ascending image-id order.
    """
    resamples = resampled_tables(gts, saver, base, samples, seed)
    scores = {r: np.asarray(s, np.float64) for r, s in scores.items()}
    drops = {r: np.empty((samples, len(thresholds[r]))) for r in scores}
    for b, (idx, table) in enumerate(resamples):
        base_ap = table.source_metrics("base")["AP"]
        for r, s in scores.items():
            step, order = exit_steps(s[idx], thresholds[r])
            metrics = table.sweep_metrics(step, len(thresholds[r]))
            for j, t in enumerate(order):
                drops[r][b, t] = base_ap - metrics[j]["AP"]
    return drops
