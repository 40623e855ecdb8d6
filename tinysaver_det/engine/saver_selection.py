"""
Saver selection by the paper's score ΔC = c_s - r*: c_s is the candidate saver's GFLOPs over the
base's, r* the largest exit rate at which the routed system's AP on the given split is still not
below the base's. Lower is better. r* is measured with the confidence router, which needs no trained
evaluator: selection comes before evaluator training.
"""

import hashlib
import logging
import os
from typing import List, Sequence, Tuple

from tabulate import tabulate

from detectron2.modeling import build_model

from ..config import cache_root, load_config
from ..evaluation.calibration import largest_safe_exit_rate, sweep
from ..flops import first_test_inputs, tinysaver_costs
from .calibrate import CachedSplit
from .trainer import load_weights

logger = logging.getLogger(__name__)


def rank_savers(
    tinysaver_config: str,
    candidates: Sequence[Tuple[str, str]],
    dataset: str,
    opts: Sequence[str] = (),
) -> List[dict]:
    """
    Args:
        tinysaver_config: a TinySaver config naming the base (each candidate replaces its saver).
        candidates: (saver config file, saver weights) pairs.
        dataset: the split on which r* is measured (the paper uses the training split).
    Returns:
        one dict per candidate, sorted by ΔC (best first).
    """
    rows = []
    for config_file, weights in candidates:
        cfg = load_config(
            tinysaver_config,
            list(opts)
            + [
                "MODEL.TINYSAVER.SAVER.CONFIG_FILE",
                config_file,
                "MODEL.TINYSAVER.SAVER.WEIGHTS",
                weights,
            ],
        )
        # One cache folder per candidate (by its files, so a rerun reuses it): a shared one would
        # (rightly) be refused as stale.
        sub = cfg.MODEL.TINYSAVER.SAVER
        tag = hashlib.sha256(f"{sub.CONFIG_FILE}\n{sub.WEIGHTS}".encode()).hexdigest()[:12]
        cfg.MODEL.TINYSAVER.CACHE.DIR = os.path.join(cache_root(cfg), f"saver_selection_{tag}")
        model = build_model(cfg)
        load_weights(model, cfg)
        model.eval()
        flops_images = cfg.MODEL.TINYSAVER.CALIBRATION.FLOPS_IMAGES
        costs = tinysaver_costs(model, first_test_inputs(cfg, dataset, flops_images))
        split = CachedSplit.load(cfg, model, dataset)
        base_ap = split.alone("base", costs)["AP"]
        curve = sweep(split.table, split.scores["confidence"], costs)
        r_star = largest_safe_exit_rate(curve, base_ap)
        rows.append(
            {
                "saver_config": config_file,
                "saver_weights": weights,
                "saver_gflops": costs["saver_gflops"],
                "saver_AP": split.alone("saver", costs)["AP"],
                "base_AP": base_ap,
                "c_s": costs["c_s"],
                "r_star": r_star,
                "delta_c": costs["c_s"] - r_star,
            }
        )
        logger.info(
            f"{config_file}: c_s {costs['c_s']:.3f}, r* {r_star:.3f}, "
            f"ΔC {costs['c_s'] - r_star:.3f}"
        )
    return sorted(rows, key=lambda r: r["delta_c"])


def format_ranking(rows: List[dict]) -> str:
    table = [
        [
            i + 1,
            r["saver_config"],
            f"{r['saver_gflops']:.3f}",
            f"{r['saver_AP']:.2f}",
            f"{r['c_s']:.3f}",
            f"{r['r_star']:.3f}",
            f"{r['delta_c']:+.3f}",
        ]
        for i, r in enumerate(rows)
    ]
    headers = ["rank", "saver", "GFLOPs/img", "AP", "c_s", "r*", "ΔC"]
    return tabulate(table, headers=headers, tablefmt="github")
