"""
Bootstrap intervals over images for the figures of a routed model on one split: the AP of the base,
the saver and the routed model, the AP drop, the exit rate and the compute saved.

On a few hundred images the AP of a fixed exit rate moves by about a third of a point between
resamples, as much as the targets it is compared with: a figure without its interval says little.
Each resample draws the split's images with replacement (a drawn image counts as often as it is
drawn, as a duplicated image would in COCOeval) and recomputes every figure exactly with MatchTable.
"""
from typing import Dict, Sequence, Tuple

import numpy as np

from ..flops import compute_saved
from .coco_fast import ImageDets, ImageGT, MatchTable

FIGURES = ("AP_base", "AP_saver", "AP_routed", "AP_drop", "exit_rate", "compute_saved")


def routing_figures(table: MatchTable, exited: np.ndarray,
                    costs: Dict[str, float]) -> Dict[str, float]:
    """The figures of one split: the routed model keeps the saver's detections where `exited`."""
    saver, base = table.sources.index("saver"), table.sources.index("base")
    routed = table.coco_metrics(np.where(exited, saver, base))["AP"]
    ap_base = table.source_metrics("base")["AP"]
    exit_rate = float(np.mean(exited)) if len(exited) else 0.0
    return {"AP_base": ap_base, "AP_saver": table.source_metrics("saver")["AP"],
            "AP_routed": routed, "AP_drop": ap_base - routed, "exit_rate": exit_rate,
            "compute_saved": compute_saved(costs, exit_rate)}


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
    if samples < 1:
        raise ValueError(f"bootstrap samples must be >= 1, got {samples}")
    exited = np.asarray(exited, dtype=bool)
    n = len(gts)
    rng = np.random.default_rng(seed)
    draws = {k: [] for k in FIGURES}
    for _ in range(samples):
        idx = np.sort(rng.integers(0, n, n))
        table = MatchTable.build([gts[i] for i in idx],
                                 {"saver": [saver[i] for i in idx], "base": [base[i] for i in idx]})
        for k, v in routing_figures(table, exited[idx], costs).items():
            draws[k].append(v)
    tail = 100 * (1 - level) / 2
    out = {}
    for k, values in draws.items():
        values = np.asarray(values, dtype=np.float64)
        values = values[np.isfinite(values)]
        out[k] = ((float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail)))
                  if len(values) else (float("nan"), float("nan")))
    return out


def format_interval(value: float, interval: Sequence[float], digits: int = 2, scale: float = 1.0,
                    suffix: str = "") -> str:
    """'44.80 [43.9, 45.7]': a figure with its interval, for tables."""
    lo, hi = interval
    return (f"{scale * value:.{digits}f}{suffix} [{scale * lo:.{max(digits - 1, 0)}f}, "
            f"{scale * hi:.{max(digits - 1, 0)}f}]")
