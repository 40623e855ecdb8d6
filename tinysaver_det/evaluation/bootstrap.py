"""
Bootstrap intervals over images for the figures of a routed model on one split: the AP of the base,
the saver and the routed model, the AP drop, the exit rate and the compute saved.

On a few hundred images the AP of a fixed exit rate moves by about a third of a point between
resamples, as much as the targets it is compared with: a figure without its interval says little.
Each resample draws the split's images with replacement (a drawn image counts as often as it is
drawn, as a duplicated image would in COCOeval) and recomputes every figure exactly (SweepTable,
which equals MatchTable and pycocotools).
"""

import multiprocessing
import os
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

from ..flops import compute_saved
from ..metrics.coco_fast import ImageDets, ImageGT
from .coco_sweep import SweepTable, exit_steps

FIGURES = ("AP_base", "AP_saver", "AP_routed", "AP_drop", "exit_rate", "compute_saved")


def resample_indices(num_images: int, samples: int, seed: int = 0) -> List[np.ndarray]:
    """`samples` draws of `num_images` image indices with replacement, each sorted: sorting keeps
    ascending image-id order (pycocotools' tie order) when the images come in it."""
    if samples < 1:  # checked on the call, not on the first resample
        raise ValueError(f"bootstrap samples must be >= 1, got {samples}")
    rng = np.random.default_rng(seed)
    return [np.sort(rng.integers(0, num_images, num_images)) for _ in range(samples)]


def _table(gts, saver, base, idx: np.ndarray) -> SweepTable:
    """The SweepTable of one resample: matched once, then any number of exit sets or sweeps."""
    return SweepTable.build([gts[i] for i in idx], [saver[i] for i in idx], [base[i] for i in idx])


# What forked workers of map_resamples compute: (fn, gts, saver, base), set before the fork.
_JOB: tuple = ()


def _run_resample(idx: np.ndarray):
    fn, gts, saver, base = _JOB
    return fn(idx, _table(gts, saver, base, idx))


def _one_sweep_thread() -> None:
    """In a worker process: the processes already use the cores, so each sweep one thread."""
    SweepTable.THREADS = 1


def default_workers() -> int:
    """Processes for bootstrap resamples: one per CPU core (each resample is single-threaded
    numpy), at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def map_resamples(
    fn: Callable[[np.ndarray, SweepTable], object],
    gts: Sequence[ImageGT],
    saver: Sequence[ImageDets],
    base: Sequence[ImageDets],
    samples: int,
    seed: int = 0,
    workers: int = 1,
) -> List[object]:
    """
    ``fn(idx, table)`` of every resample (resample_indices, and its SweepTable), in resample
    order. Resamples are independent and each is single-threaded numpy, so `workers` forked
    processes share them; the indices are drawn here, so the results do not depend on `workers`.
    Where processes cannot be forked (not Linux/macOS), or for one worker, they run here in turn.
    """
    indices = resample_indices(len(gts), samples, seed)
    workers = min(workers, samples)
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return [fn(idx, _table(gts, saver, base, idx)) for idx in indices]
    global _JOB
    _JOB = (fn, gts, saver, base)  # inherited by the forked workers, never pickled
    try:
        with multiprocessing.get_context("fork").Pool(workers, _one_sweep_thread) as pool:
            return pool.map(_run_resample, indices, chunksize=max(1, samples // (4 * workers)))
    finally:
        _JOB = ()


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
    workers: int = 1,
) -> Dict[str, Tuple[float, float]]:
    """
    Percentile intervals (`level`, two-sided) of :data:`FIGURES` over `samples` resamples of the
    images. Images must come in ascending image-id order (MatchTable's tie order), which a sorted
    resample keeps. `workers`: processes sharing the resamples (map_resamples).
    """
    return bootstrap_routers(
        gts,
        saver,
        base,
        {"routed": exited},
        costs,
        samples=samples,
        level=level,
        seed=seed,
        workers=workers,
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
    workers: int = 1,
) -> Dict[str, Dict[str, Tuple[float, float]]]:
    """
    bootstrap_routing for several exit sets at once (router -> exited mask), on the same resamples:
    each resample is matched once (SweepTable) and every router costs one metric evaluation.
    """
    exits = {r: np.asarray(e, dtype=bool) for r, e in exits.items()}

    def figures(idx: np.ndarray, table: SweepTable) -> Dict[str, tuple]:
        ap_base, ap_saver = table.source_metrics("base")["AP"], table.source_metrics("saver")["AP"]
        out = {}
        for r, exited in exits.items():
            e = exited[idx]
            routed = table.coco_metrics(np.where(e, 0, 1))["AP"]
            rate = float(np.mean(e)) if len(e) else 0.0
            out[r] = (ap_base, ap_saver, routed, ap_base - routed, rate, compute_saved(costs, rate))
        return out

    draws = map_resamples(figures, gts, saver, base, samples, seed, workers)
    tail = 100 * (1 - level) / 2
    out = {}
    for r in exits:
        values = np.asarray([d[r] for d in draws], dtype=np.float64)  # (samples, FIGURES)
        out[r] = {}
        for k, column in zip(FIGURES, values.T):
            column = column[np.isfinite(column)]
            out[r][k] = (
                (float(np.percentile(column, tail)), float(np.percentile(column, 100 - tail)))
                if len(column)
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
    workers: int = 1,
) -> Dict[str, np.ndarray]:
    """
    AP drops (base AP - routed AP, points) of each router's thresholds over `samples` resamples of
    the images: router -> array (samples, len(thresholds[router])). A resample is matched once and
    swept incrementally for every router (SweepTable). Images in ascending image-id order.
    """
    scores = {r: np.asarray(s, np.float64) for r, s in scores.items()}

    def drops_of(idx: np.ndarray, table: SweepTable) -> Dict[str, np.ndarray]:
        base_ap = table.source_metrics("base")["AP"]
        out = {}
        for r, s in scores.items():
            step, order = exit_steps(s[idx], thresholds[r])
            metrics = table.sweep_metrics(step, len(thresholds[r]))
            out[r] = np.empty(len(thresholds[r]))
            for j, t in enumerate(order):
                out[r][t] = base_ap - metrics[j]["AP"]
        return out

    draws = map_resamples(drops_of, gts, saver, base, samples, seed, workers)
    return {r: np.stack([d[r] for d in draws]) for r in scores}
