"""
Threshold calibration from cached predictions: sweep the threshold of every router, compute COCO
box AP of the merged predictions, exit rate, GFLOPs per image and compute saved at each point, and
choose the threshold for a target (largest allowed AP drop against the base, or a GFLOPs budget).

Every point's AP is exact COCO AP (coco_fast.MatchTable, tested against pycocotools); a sweep walks
the thresholds incrementally (coco_sweep.SweepTable), so 100 points cost far less than 100
recomputations. A source that detects nothing scores AP 0 where there is ground truth (NaN only
where AP is undefined), as in evaluation (coco_evaluator.py).

An AP-drop target is met on a bootstrap upper confidence bound of the drop, not on the drop of the
one sample the calibration split is: on a few hundred images a fixed exit rate's AP moves by about
a third of a point between resamples, and the cheapest of a hundred noisy points that pass is
mostly a lucky one (choose_point_bootstrap).
"""

import logging
import math
from typing import Dict, List, Optional, Sequence

import numpy as np
from scipy.stats import spearmanr

from ..config import check_threshold
from ..flops import compute_saved, routed_gflops
from ..modeling.routing import confidence_scores, gain_oracle_scores, random_scores
from .coco_sweep import SweepTable, as_sweep_table, exit_steps

logger = logging.getLogger(__name__)

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


# Routers that exist only in calibration tables, as ceilings and diagnostics (they need ground truth
# of the whole split or the generator's difficulty, so no model can deploy them).
DIAGNOSTIC_ROUTERS = ("marginal_oracle", "difficulty")
# How tables name each router.
ROUTER_LABELS = {
    "evaluator": "evaluator",
    "confidence": "confidence",
    "random": "random",
    "oracle": "gain oracle (noise-exploiting bound)",
    "marginal_oracle": "marginal-AP oracle (ceiling)",
    "difficulty": "true difficulty",
}


def router_scores(
    records: Sequence[dict],
    evaluator_scores: Optional[np.ndarray],
    seed: int = 0,
    marginal: Optional[np.ndarray] = None,
    difficulty: Optional[np.ndarray] = None,
) -> Dict[str, np.ndarray]:
    """
    Routing scores of every router for cached records (higher = exit): the evaluator's, the saver's
    top detection score, a random number fixed per image, the per-image-gain oracle (minus the true
    AP gain: it exploits per-image noise no predictor sees, so it is an upper bound, not a target)
    and, when given, the marginal-AP oracle (each image's true effect on the split's AP: the
    realistic ceiling) and the router by the generator's true difficulty (easiest exit first).
    """
    # The score functions the meta-architecture routes by (modeling/routing.py), on cached values.
    scores = {
        "confidence": confidence_scores([r["confidence"] for r in records]).numpy(),
        "random": random_scores([r["image_id"] for r in records], seed).numpy(),
        "oracle": gain_oracle_scores(
            [r["saver_ap"] for r in records], [r["base_ap"] for r in records]
        ).numpy(),
    }
    if marginal is not None:
        scores["marginal_oracle"] = np.asarray(marginal, dtype=np.float64)
    if difficulty is not None:
        scores["difficulty"] = -np.asarray(difficulty, dtype=np.float64)
    if evaluator_scores is not None:
        scores = {"evaluator": np.asarray(evaluator_scores, dtype=np.float64), **scores}
    return scores


def candidate_thresholds(scores: np.ndarray, num: int = 101) -> List[float]:
    """
    Thresholds at the score quantiles (exit rate in steps of about 1/num), plus -inf and +inf.
    The exit set only changes at score values, so each candidate is an observed score.
    """
    finite = np.sort(scores[np.isfinite(scores)])
    if len(finite) == 0:
        return [math.inf]
    idx = np.unique(np.round(np.linspace(0, len(finite) - 1, num)).astype(int))
    return [-math.inf] + sorted(set(float(finite[i]) for i in idx)) + [math.inf]


def sweep(table, scores: np.ndarray, costs: Dict[str, float], thresholds=None) -> List[dict]:
    """
    One point per threshold: exit rate, COCO metrics of the merged predictions (exited images keep
    the saver's detections: source 0; routed ones the base's: source 1), GFLOPs and compute saved.
    ``table``: a MatchTable of (saver, base) or a SweepTable. Thresholds are walked in order of
    growing exit set, each image switching source once (coco_sweep), so a point costs one pass over
    the kept true positives instead of a full recomputation; points come back in the given order.
    """
    thresholds = candidate_thresholds(scores) if thresholds is None else list(thresholds)
    for t in thresholds:
        check_threshold(t)
    scores = np.asarray(scores, dtype=np.float64)
    step, order = exit_steps(scores, thresholds)
    metrics = as_sweep_table(table).sweep_metrics(step, len(thresholds))
    points = [None] * len(thresholds)
    for j, i in enumerate(order):
        # The same rule as routing.exit_mask: finite scores >= threshold exit.
        rate = float((step <= j).mean()) if len(step) else 0.0
        points[i] = {
            "threshold": float(thresholds[i]),
            "exit_rate": rate,
            **{k: float(metrics[j][k]) for k in METRICS},
            "gflops": routed_gflops(costs, rate),
            "compute_saved": compute_saved(costs, rate),
        }
    return points


def choose_point(
    points: List[dict], base_ap: float, max_ap_drop: float = 0.5, gflops_budget: float = 0.0
) -> dict:
    """
    The operating point for a target. With a GFLOPs budget (> 0): the most accurate point within it
    (or the cheapest point, flagged, if none fits). Otherwise: the cheapest point whose AP is at
    least base_ap - max_ap_drop; if none qualifies, route everything (threshold +inf).
    """
    if gflops_budget > 0:
        within = [p for p in points if p["gflops"] <= gflops_budget]
        if not within:
            logger.warning(
                f"No threshold meets the budget of {gflops_budget} GFLOPs/image; "
                "taking the cheapest"
            )
            return {**min(points, key=lambda p: p["gflops"]), "target_met": False}
        return {**max(within, key=lambda p: (p["AP"], -p["gflops"])), "target_met": True}
    ok = [p for p in points if p["AP"] >= base_ap - max_ap_drop - 1e-9]
    if not ok:
        route_all = max(points, key=lambda p: p["threshold"])
        return {**route_all, "target_met": False}
    return {**min(ok, key=lambda p: (p["gflops"], -p["AP"])), "target_met": True}


def choose_point_bootstrap(
    points: List[dict], drops: np.ndarray, max_ap_drop: float = 0.5, level: float = 0.9
) -> dict:
    """
    The operating point for an AP-drop target that survives resampling: each point's upper
    confidence bound of the drop (the `level` quantile of its bootstrap drops, `drops` of shape
    (samples, len(points))) must be within `max_ap_drop`. Monotone: points are walked from fewest
    to most exits, and the walk stops at the first point whose bound fails, so a lucky point beyond
    a failing stretch is never taken. Routing everything (no exits) always qualifies.
    """
    drops = np.asarray(drops, np.float64)
    if drops.ndim != 2 or drops.shape[1] != len(points):
        raise ValueError(f"drops must be (samples, {len(points)}), got {drops.shape}")
    ucb = np.quantile(drops, level, axis=0)
    order = sorted(
        range(len(points)), key=lambda i: (points[i]["exit_rate"], -points[i]["threshold"])
    )
    chosen = None
    for i in order:
        if points[i]["exit_rate"] == 0.0:  # no exit: the base itself, no drop whatever the resample
            chosen = i if chosen is None else chosen
            continue
        if not ucb[i] <= max_ap_drop + 1e-9:
            break
        chosen = i
    if chosen is None:
        chosen = max(range(len(points)), key=lambda i: points[i]["threshold"])
    bound = float(max(ucb[chosen], 0.0) if points[chosen]["exit_rate"] else 0.0)
    return {**points[chosen], "ap_drop_ucb": bound, "target_met": True}


def ap_by_score_bins(gts, saver, base, scores: np.ndarray, bins: int = 10) -> List[dict]:
    """
    COCO AP of the saver alone and of the base alone on the images of each score bin (equal counts,
    lowest scores first): whether the pair can pay at all. Routing saves accuracy-free compute only
    where the saver is about as good as the base, so the top bins should show no gap.
    """
    scores = np.asarray(scores, np.float64)
    order = np.argsort(scores, kind="stable")
    rows = []
    for b, part in enumerate(np.array_split(order, bins)):
        if not len(part):
            continue
        part = np.sort(part)  # ascending image order: pycocotools' tie order
        table = SweepTable.build(
            [gts[i] for i in part], [saver[i] for i in part], [base[i] for i in part]
        )
        s_ap, b_ap = table.source_metrics("saver")["AP"], table.source_metrics("base")["AP"]
        rows.append(
            {
                "bin": b,
                "images": int(len(part)),
                "score_min": float(scores[part].min()),
                "score_max": float(scores[part].max()),
                "AP_saver": float(s_ap),
                "AP_base": float(b_ap),
                "gap": float(b_ap - s_ap),
            }
        )
    return rows


def apply_threshold(table, scores: np.ndarray, threshold: float, costs: Dict[str, float]) -> dict:
    """Metrics of one fixed threshold (e.g. chosen on the calibration split) on another split."""
    return sweep(table, scores, costs, thresholds=[threshold])[0]


def largest_safe_exit_rate(points: List[dict], base_ap: float) -> float:
    """r*: the largest exit rate at which the routed AP is not below the base's (the paper's ΔC)."""
    ok = [p["exit_rate"] for p in points if p["AP"] >= base_ap - 1e-9]
    return max(ok) if ok else 0.0


def check_base_ap(base_ap: float, dataset: str) -> bool:
    """
    Whether the base's AP can anchor an AP-drop target; if not (0 or undefined), say loudly what
    to check: against a base of 0 AP every threshold "meets" the target and all images exit.
    """
    if base_ap > 0:
        return True
    logger.warning(
        f"The base scores {base_ap:.2f} AP on {dataset}: every threshold meets an AP-drop target "
        "against it, so the chosen point lets every image exit and means nothing. Check "
        "MODEL.TINYSAVER.BASE.WEIGHTS (missing, random or another model's), that the model's "
        "classes match the dataset's categories (NUM_CLASSES, the category id map), and that "
        "the dataset has ground truth."
    )
    return False


def rank_correlation(scores, truth, what: str) -> float:
    """
    Spearman correlation of a router's scores with the true per-image quality. NaN, with a
    warning that says what to check, where it is undefined (either side constant), instead of
    scipy's bare ConstantInputWarning.
    """
    scores, truth = np.asarray(scores, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    for name, values in (("true per-image quality", truth), ("score", scores)):
        if len(values) < 2 or np.all(values == values[0]):
            logger.warning(
                f"{what}: the {name} is the same on all {len(values)} images "
                f"({values[0] if len(values) else 'none'}), so its rank correlation is undefined "
                "(NaN). A constant true quality usually means no detection matches the ground "
                "truth: check the saver and base weights and the category id map; a constant "
                "score, the evaluator's weights (MODEL.WEIGHTS)."
            )
            return float("nan")
    return float(spearmanr(scores, truth).statistic)
