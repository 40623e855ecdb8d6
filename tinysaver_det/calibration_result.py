"""
CalibrationResult owns calibration.json: tools/calibrate.py saves it, and config loading
(CALIBRATION_FILE -> THRESHOLD), evaluation (the sub-models' GFLOPs), the demo and the benchmarks
load it. It depends on nothing else in the package, so config.py can read it.
"""

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict

from .utils.atomic import atomic_save_json

# 2: the names below. 1 (no "format" key): "chosen" for the deployed point, and "calibration" with
# "chosen" inside for every router's point; still read.
FORMAT = 2


@dataclass
class CalibrationResult:
    """What a calibration chose and measured. Points are `evaluation.calibration.sweep` points."""

    router: str  # the router the model deploys (MODEL.TINYSAVER.ROUTER)
    # The deployed router's chosen point, whose threshold the model takes: threshold, exit_rate,
    # the COCO metrics, gflops, compute_saved, target_met (and ap_drop_ucb on an AP-drop target).
    deployed_point: Dict[str, Any]
    target: Dict[str, Any] = field(default_factory=dict)  # max_ap_drop, gflops_budget, ucb_level
    calibration_dataset: str = ""
    costs: Dict[str, float] = field(default_factory=dict)  # flops.tinysaver_costs
    # On the calibration split: base, saver, chosen_by_router (each router's chosen point, the
    # deployed one among them), curves, rank_correlation, score_bins, difficulty_bins.
    calibration_split: Dict[str, Any] = field(default_factory=dict)
    # Per report split: rank_correlation, base, saver, routers (each at its chosen threshold),
    # router_intervals, intervals (the deployed router's).
    reports: Dict[str, Any] = field(default_factory=dict)

    @property
    def threshold(self) -> float:
        return self.deployed_point["threshold"]

    def save(self, path: str) -> None:
        atomic_save_json({"format": FORMAT, **asdict(self)}, path)

    @classmethod
    def load(cls, path: str) -> "CalibrationResult":
        """Read a calibration.json (either format); a file without a chosen threshold is refused."""
        try:
            with open(path) as f:
                raw = json.load(f)
            if raw.get("format", 1) == 1:
                raw = _from_format_1(raw)
            elif raw["format"] != FORMAT:
                raise ValueError(f"format {raw['format']!r}, this code reads 1 and {FORMAT}")
            raw.pop("format")
            result = cls(**raw)
            if "threshold" not in result.deployed_point:
                raise KeyError("deployed_point.threshold")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(
                f"Calibration file {path!r} is not a calibration.json with a chosen threshold "
                f"(written by tools/calibrate.py): {type(e).__name__}: {e}"
            ) from e
        return result


def _from_format_1(raw: dict) -> dict:
    """A calibration.json written before the format had a number, in today's names."""
    split = dict(raw.get("calibration", {}))
    if "chosen" in split:
        split["chosen_by_router"] = split.pop("chosen")
    kept = {k: raw[k] for k in ("target", "calibration_dataset", "costs", "reports") if k in raw}
    return {
        "format": FORMAT,
        "router": raw.get("router", "evaluator"),
        "deployed_point": raw["chosen"],
        "calibration_split": split,
        **kept,
    }
