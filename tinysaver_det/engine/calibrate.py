"""
Calibration run behind tools/calibrate.py: choose the threshold on the calibration split from cached
predictions, report every router at its chosen threshold on other splits, write the choice where
`--eval-only` and deployment pick it up (calibration.json and a calibrated config), and plot.
"""

import logging
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from tabulate import tabulate

from detectron2.data import MetadataCatalog
from detectron2.utils import comm

from ..calibration_result import CalibrationResult
from ..config import make_paths_absolute, read_calibrated_threshold
from ..data.checks import check_dataset_files, checked_dataset_dicts
from ..data.datasets import image_difficulties
from ..evaluation.bootstrap import bootstrap_ap_drops, bootstrap_routers, default_workers
from ..evaluation.calibration import (
    DIAGNOSTIC_ROUTERS,
    METRICS,
    ROUTER_LABELS,
    ap_by_score_bins,
    apply_threshold,
    candidate_thresholds,
    check_base_ap,
    choose_point,
    choose_point_bootstrap,
    rank_correlation,
    router_scores,
    sweep,
)
from ..evaluation.coco_sweep import SweepTable
from ..evaluation.detections import record_dets
from ..evaluation.ground_truth import dataset_ground_truth
from ..evaluation.plots import plot_accuracy_compute, plot_examples, plot_score_distribution
from ..evaluation.quality import marginal_targets_of, routing_quality
from ..flops import first_test_inputs, tinysaver_costs
from ..modeling.routing import evaluator_scores, exit_mask
from ..utils.atomic import atomic_write_text
from .output_cache import OutputCache

logger = logging.getLogger(__name__)


class CachedSplit:
    """
    A dataset's cached saver and base predictions, ready for sweeps: records, SweepTable, every
    router's scores, and each image's marginal effect on the split's AP (the realistic ceiling).
    `CachedSplit.load` reads (or builds) the cache and runs the evaluator; the constructor only
    computes from what it is given.
    """

    def __init__(
        self,
        name: str,
        records: List[dict],
        dataset_dicts: List[dict],
        gts: List,
        evaluator_scores: np.ndarray,
        seed: int = 0,
        difficulty: np.ndarray = None,
    ):
        """records, gts and evaluator_scores: one per image, in ascending image id order."""
        self.name, self.records, self.dataset_dicts, self.gts = name, records, dataset_dicts, gts
        self.dets = {part: [record_dets(r[part]) for r in records] for part in ("saver", "base")}
        # SweepTable (not MatchTable): compact, and its sweeps walk thresholds incrementally.
        self.table = SweepTable.build(gts, self.dets["saver"], self.dets["base"])
        self.marginal = marginal_targets_of(self.table)
        self.scores = router_scores(
            records, evaluator_scores, seed=seed, marginal=self.marginal, difficulty=difficulty
        )

    @classmethod
    def load(cls, cfg, model, dataset_name: str) -> "CachedSplit":
        """Read the split's cache (building what is missing with `model`) and score its images."""
        cache = OutputCache(cfg, dataset_name, views=1, with_base=True, model=model)
        records = cache.load_or_build()
        dataset_dicts = checked_dataset_dicts(
            [dataset_name], cfg.MODEL.TINYSAVER.DATA.SKIP_BAD_IMAGES
        )
        gts = dataset_ground_truth(dataset_name, dataset_dicts)
        # Images in ascending id order reproduce pycocotools' tie order.
        records = [records[i] for i in np.argsort([r["image_id"] for r in records], kind="stable")]
        summary = torch.stack([r["summary"] for r in records]).to(model.device)
        scores = evaluator_scores(model.evaluator, summary).cpu().numpy()
        return cls(
            dataset_name,
            records,
            dataset_dicts,
            [gts[r["index"]] for r in records],
            scores,
            seed=cfg.MODEL.TINYSAVER.RANDOM_SEED,
            difficulty=image_difficulties(dataset_name, [r["image_id"] for r in records]),
        )

    def truth(self, target: str) -> np.ndarray:
        """The true routing quality of each image under an evaluator target (higher = exit)."""
        return routing_quality(
            target,
            [r["saver_ap"] for r in self.records],
            [r["base_ap"] for r in self.records],
            self.marginal,
        )

    def rank_correlations(self, target: str) -> Dict[str, float]:
        """Spearman correlation of each deployable router's score with the true quality."""
        truth = self.truth(target)
        return {
            r: rank_correlation(s, truth, f"{self.name}, {r} router")
            for r, s in self.scores.items()
            if r not in ("oracle", *DIAGNOSTIC_ROUTERS)
        }

    def score_bins(self, router: str, bins: int = 10) -> List[dict]:
        """AP of saver and base alone per bin of a router's score (calibration.ap_by_score_bins)."""
        return ap_by_score_bins(
            self.gts, self.dets["saver"], self.dets["base"], self.scores[router], bins
        )

    def intervals(
        self, thresholds: Dict[str, float], costs: Dict[str, float], samples: int, workers: int = 1
    ) -> dict:
        """Bootstrap intervals over this split's images of each router's figures at a threshold."""
        exits = {r: exit_mask(self.scores[r], t).numpy() for r, t in thresholds.items()}
        return bootstrap_routers(
            self.gts,
            self.dets["saver"],
            self.dets["base"],
            exits,
            costs,
            samples=samples,
            workers=workers,
        )

    def alone(self, source: str, costs: Dict[str, float]) -> dict:
        """Metrics of the saver or the base alone (the saver alone pays no evaluator)."""
        m = self.table.source_metrics(source)
        gflops = costs["saver_gflops"] if source == "saver" else costs["base_gflops"]
        return {
            **{k: float(m[k]) for k in METRICS},
            "gflops": gflops,
            "compute_saved": 1 - gflops / costs["base_gflops"],
            "exit_rate": 1.0 if source == "saver" else 0.0,
        }


def calibrate(
    cfg,
    model,
    *,
    dataset: str,
    report_datasets: Sequence[str] = (),
    max_ap_drop: float = 0.5,
    gflops_budget: float = 0.0,
    output_dir: str = "",
) -> CalibrationResult:
    """
    Sweep every router's threshold on `dataset`, choose each router's point for the target, report
    those thresholds on `report_datasets`, write calibration.json (the deployed router's choice is
    the model's threshold) and the plots to `output_dir`. Returns what calibration.json holds.
    """
    output_dir = output_dir or cfg.OUTPUT_DIR
    check_dataset_files([dataset, *report_datasets])
    ts = cfg.MODEL.TINYSAVER
    costs = tinysaver_costs(model, first_test_inputs(cfg, dataset, ts.CALIBRATION.FLOPS_IMAGES))
    logger.info(
        f"GFLOPs/image: saver {costs['saver_gflops']:.3f}, evaluator "
        f"{costs['evaluator_gflops']:.5f}, base {costs['base_gflops']:.3f} "
        f"(c_s {costs['c_s']:.3f}, c_e {costs['c_e']:.5f})"
    )
    deployed = ts.ROUTER
    calib = CachedSplit.load(cfg, model, dataset)
    base, saver = calib.alone("base", costs), calib.alone("saver", costs)
    check_base_ap(base["AP"], dataset)
    curves, chosen = choose_points(
        calib, costs, base["AP"], ts.CALIBRATION, max_ap_drop, gflops_budget
    )
    reports = {
        name: report(
            CachedSplit.load(cfg, model, name),
            chosen,
            costs,
            ts.EVALUATOR.TARGET,
            ts.CALIBRATION.BOOTSTRAP_SAMPLES,
            deployed,
            bootstrap_workers(ts.CALIBRATION),
        )
        for name in report_datasets
    }
    result = CalibrationResult(
        router=deployed,
        deployed_point=chosen[deployed],
        target={
            "max_ap_drop": max_ap_drop,
            "gflops_budget": gflops_budget,
            "ucb_level": ts.CALIBRATION.UCB_LEVEL,
        },
        calibration_dataset=dataset,
        costs=costs,
        calibration_split={
            "base": base,
            "saver": saver,
            "chosen_by_router": chosen,
            "curves": curves,
            "rank_correlation": calib.rank_correlations(ts.EVALUATOR.TARGET),
            # Whether the pair can pay: saver and base AP per decile of the deployed score.
            "score_bins": calib.score_bins(deployed),
            # On generated splits, the same by the generator's true difficulty.
            "difficulty_bins": (
                calib.score_bins("difficulty") if "difficulty" in calib.scores else []
            ),
        },
        reports=reports,
    )
    point = result.deployed_point
    if point["compute_saved"] <= 0:
        # Routing then costs more than the base alone (every image pays the saver): say so plainly.
        logger.warning(
            f"At this target the {deployed} router saves no compute on {dataset} "
            f"({100 * point['compute_saved']:.1f}% at exit rate {point['exit_rate']:.2f}): "
            "running the base alone is cheaper. A saver closer to the base, or a looser target, "
            "is needed."
        )
    if comm.is_main_process():
        write_outputs(cfg, result, calib, output_dir)
    return result


def bootstrap_workers(settings) -> int:
    """Processes for bootstrap resamples (MODEL.TINYSAVER.CALIBRATION.BOOTSTRAP_WORKERS)."""
    return settings.BOOTSTRAP_WORKERS or default_workers()


def choose_points(
    calib: CachedSplit,
    costs: Dict[str, float],
    base_ap: float,
    settings,
    max_ap_drop: float,
    gflops_budget: float,
) -> Tuple[dict, dict]:
    """
    Every router's sweep over its candidate thresholds (the curves) and its point for the target
    (router -> point). `settings`: MODEL.TINYSAVER.CALIBRATION.
    """
    scores = calib.scores
    curves = {r: sweep(calib.table, s, costs, candidate_thresholds(s)) for r, s in scores.items()}
    if gflops_budget > 0:
        chosen = {
            r: choose_point(points, base_ap, gflops_budget=gflops_budget)
            for r, points in curves.items()
        }
        return curves, chosen
    # The drop must stay within the target on a bootstrap upper bound, not on this one sample.
    # Candidates at coarser exit-rate steps than the curves: resamples cost one sweep each.
    candidates = {r: candidate_thresholds(s, settings.NUM_CANDIDATES) for r, s in scores.items()}
    points = {r: sweep(calib.table, s, costs, candidates[r]) for r, s in scores.items()}
    logger.info(
        f"Choosing thresholds on a {settings.UCB_LEVEL:.0%} bootstrap upper bound of the "
        f"AP drop ({settings.BOOTSTRAP_SAMPLES} resamples of {len(calib.records)} images)"
    )
    drops = bootstrap_ap_drops(
        calib.gts,
        calib.dets["saver"],
        calib.dets["base"],
        scores,
        candidates,
        samples=settings.BOOTSTRAP_SAMPLES,
        workers=bootstrap_workers(settings),
    )
    chosen = {
        r: choose_point_bootstrap(points[r], drops[r], max_ap_drop, settings.UCB_LEVEL)
        for r in points
    }
    return curves, chosen


def report(
    split: CachedSplit,
    chosen: Dict[str, dict],
    costs: Dict[str, float],
    target: str,
    samples: int,
    deployed: str,
    workers: int = 1,
) -> dict:
    """Every router at the threshold chosen on the calibration split, on another split."""
    thresholds = {r: chosen[r]["threshold"] for r in split.scores if r in chosen}
    out = {
        "rank_correlation": split.rank_correlations(target),
        "base": split.alone("base", costs),
        "saver": split.alone("saver", costs),
        "routers": {
            r: apply_threshold(split.table, split.scores[r], t, costs)
            for r, t in thresholds.items()
        },
        # Intervals of every router's figures (bootstrap over this split's images).
        "router_intervals": split.intervals(thresholds, costs, samples, workers),
    }
    out["intervals"] = out["router_intervals"][deployed]
    return out


def write_outputs(cfg, result: CalibrationResult, calib: CachedSplit, output_dir: str) -> None:
    """calibration.json, the calibrated config and the plots of the deployed router."""
    os.makedirs(output_dir, exist_ok=True)
    calibration_file = os.path.join(output_dir, "calibration.json")
    result.save(calibration_file)
    write_calibrated_config(
        cfg, calibration_file, os.path.join(output_dir, "config_calibrated.yaml")
    )
    router, split = result.router, result.calibration_split
    point = split["chosen_by_router"][router]
    plot_accuracy_compute(
        split["curves"],
        split["base"],
        split["saver"],
        point,
        os.path.join(output_dir, "accuracy_vs_gflops.png"),
        title=f"{result.calibration_dataset}: AP against GFLOPs per image",
        max_ap_drop=result.target["max_ap_drop"],
        gflops_budget=result.target["gflops_budget"],
    )
    plot_score_distribution(
        calib.scores[router],
        point["threshold"],
        os.path.join(output_dir, "score_distribution.png"),
        router,
    )
    plot_examples(
        calib.dataset_dicts,
        calib.records,
        calib.scores[router],
        point["threshold"],
        MetadataCatalog.get(result.calibration_dataset),
        os.path.join(output_dir, "examples.png"),
    )


def write_calibrated_config(cfg, calibration_file: str, path: str) -> None:
    """
    The config to deploy: the same model, with the calibration file and its chosen threshold, every
    path absolute (it runs from any working directory), and its own OUTPUT_DIR (`eval` beside it),
    so that running it keeps this calibration run's config.yaml.
    """
    out = cfg.clone()
    out.defrost()
    make_paths_absolute(out)
    out.MODEL.TINYSAVER.CALIBRATION_FILE = os.path.abspath(calibration_file)
    out.MODEL.TINYSAVER.THRESHOLD = read_calibrated_threshold(calibration_file)
    out.OUTPUT_DIR = os.path.join(os.path.dirname(os.path.abspath(path)), "eval")
    atomic_write_text(out.dump(), path)


def format_results(result: CalibrationResult) -> str:
    """Tables: each router on the calibration split at its chosen point and on each report split."""
    rows: List[list] = []

    def row(split, name, p, threshold=None, interval=""):
        rows.append(
            [
                split,
                name,
                f"{p['AP']:.2f}",
                f"{p['AP50']:.2f}",
                f"{p['gflops']:.3f}",
                f"{100 * p['compute_saved']:.1f}%",
                f"{100 * p['exit_rate']:.1f}%",
                "" if threshold is None else f"{threshold:.4g}",
                interval,
            ]
        )

    def interval(iv):
        (d0, d1), (s0, s1) = iv["AP_drop"], iv["compute_saved"]
        return f"drop [{d0:.2f}, {d1:.2f}], saved [{100 * s0:.0f}%, {100 * s1:.0f}%]"

    cal = result.calibration_split
    split = result.calibration_dataset
    row(split, "base", cal["base"])
    row(split, "saver", cal["saver"])
    level = result.target.get("ucb_level", 0.9)
    for r, p in cal["chosen_by_router"].items():
        label = ROUTER_LABELS.get(r, r) + ("" if p.get("target_met", True) else " (target not met)")
        bound = (
            f"drop {p['ap_drop_ucb']:.2f} at most ({level:.0%} bound)" if "ap_drop_ucb" in p else ""
        )
        row(split, label, p, p["threshold"], bound)
    for name, rep in result.reports.items():
        row(name, "base", rep["base"])
        row(name, "saver", rep["saver"])
        ivs = rep.get("router_intervals", {})
        for r, p in rep["routers"].items():
            row(
                name,
                ROUTER_LABELS.get(r, r),
                p,
                p["threshold"],
                interval(ivs[r]) if r in ivs else "",
            )
    headers = [
        "split",
        "router",
        "AP",
        "AP50",
        "GFLOPs/img",
        "saved",
        "exit rate",
        "threshold",
        "95% bootstrap interval",
    ]
    lines = [tabulate(rows, headers=headers, tablefmt="github")]
    for key, what in (
        ("score_bins", f"the {result.router} score"),
        ("difficulty_bins", "minus the generator's true difficulty"),
    ):
        if cal.get(key):
            lines += [
                "",
                f"AP of saver and base alone per decile of {what} on {split} (lowest "
                "first; routing pays where the gap is small):",
                tabulate(
                    [
                        [
                            b["bin"],
                            b["images"],
                            f"{b['score_min']:.3g}..{b['score_max']:.3g}",
                            f"{b['AP_saver']:.2f}",
                            f"{b['AP_base']:.2f}",
                            f"{b['gap']:+.2f}",
                        ]
                        for b in cal[key]
                    ],
                    headers=["decile", "images", "score", "AP saver", "AP base", "base - saver"],
                    tablefmt="github",
                ),
            ]
    lines += ["", "Spearman correlation with the true quality of the evaluator's target:"]
    splits = [(split, cal["rank_correlation"])]
    splits += [(n, r["rank_correlation"]) for n, r in result.reports.items()]
    for name, corr in splits:
        lines.append(f"  {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in corr.items()))
    for name, rep in result.reports.items():
        intervals = ", ".join(
            f"{k} [{lo:.3g}, {hi:.3g}]" for k, (lo, hi) in rep["intervals"].items()
        )
        lines.append(
            f"95% bootstrap intervals over the images of {name} ({result.router} "
            f"router): {intervals}"
        )
    return "\n".join(lines)
