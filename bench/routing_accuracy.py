"""
Accuracy for compute on held-out splits: each router's threshold is chosen on the calibration split
for an AP drop of at most --max-ap-drop (on a bootstrap upper bound, tools/calibrate.py's rule) and
applied, as deployed, to a held-out split of the same distribution (synthetic_test) and to a shifted
one (synthetic_shifted: a harder mix, other backgrounds). Every figure comes with a 95% bootstrap
interval over the split's images. Ratios: evaluator against confidence and against the marginal-AP
oracle (the realistic ceiling; the per-image-gain oracle exploits per-image noise and is only an
upper bound). "Best in split" (the cheapest point of the split's own sweep within the drop) is tuned
on the split it reports and is printed only as a labelled diagnostic. Writes JSON and plots.

    python bench/routing_accuracy.py MODEL.WEIGHTS output/demo/tinysaver/model_final.pth \
        MODEL.TINYSAVER.SAVER.WEIGHTS output/demo/saver/model_final.pth \
        MODEL.TINYSAVER.BASE.WEIGHTS output/demo/base/model_final.pth
"""

import argparse
import math
import os
import platform

import torch
from tabulate import tabulate

from detectron2.modeling import build_model
from tinysaver_det.config import load_config
from tinysaver_det.engine.calibrate import CachedSplit, calibrate, format_results
from tinysaver_det.engine.trainer import load_weights
from tinysaver_det.evaluation.calibration import ROUTER_LABELS, choose_point, sweep
from tinysaver_det.evaluation.plots import plot_accuracy_compute
from tinysaver_det.utils.atomic import atomic_save_json


def ratio(a: float, b: float) -> float:
    """a / b where b saves compute; NaN otherwise (a ratio to nothing means nothing)."""
    return a / b if b > 0 else float("nan")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", default="configs/Synthetic/tinysaver_R18_cascade_R18.yaml")
    parser.add_argument("--splits", nargs="+", default=["synthetic_test", "synthetic_shifted"])
    parser.add_argument("--max-ap-drop", type=float, default=0.5)
    parser.add_argument("--out-dir", default="output/bench/routing_accuracy")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args()

    cfg = load_config(args.config_file, args.opts + ["OUTPUT_DIR", args.out_dir])
    model = build_model(cfg)
    load_weights(model, cfg)
    model.eval()
    result = calibrate(
        cfg,
        model,
        dataset=cfg.MODEL.TINYSAVER.CALIBRATION.DATASET,
        report_datasets=args.splits,
        max_ap_drop=args.max_ap_drop,
        output_dir=args.out_dir,
    )
    print(format_results(result))
    costs = result.costs
    rows, summary = [], {}
    for name in args.splits:
        split = CachedSplit.load(cfg, model, name)
        base, saver = split.alone("base", costs), split.alone("saver", costs)
        curves = {r: sweep(split.table, s, costs) for r, s in split.scores.items()}
        best = {
            r: choose_point(p, base["AP"], max_ap_drop=args.max_ap_drop) for r, p in curves.items()
        }
        report = result.reports[name]
        calibrated, intervals = report["routers"], report["router_intervals"]
        plot_accuracy_compute(
            curves,
            base,
            saver,
            calibrated["evaluator"],
            os.path.join(args.out_dir, f"{name}_accuracy_vs_gflops.png"),
            title=f"{name}: AP against GFLOPs per image",
            max_ap_drop=args.max_ap_drop,
        )
        saved = {r: p["compute_saved"] for r, p in calibrated.items()}
        summary[name] = {
            "base": base,
            "saver": saver,
            "calibrated": calibrated,
            "intervals": intervals,
            "best_in_split_diagnostic": best,
            "evaluator_vs_confidence": ratio(saved["evaluator"], saved["confidence"]),
            "evaluator_share_of_marginal_oracle": ratio(
                saved["evaluator"], saved.get("marginal_oracle", 0.0)
            ),
        }
        for r, c in calibrated.items():
            iv = intervals[r]
            drop = base["AP"] - c["AP"]
            rows.append(
                [
                    name,
                    ROUTER_LABELS.get(r, r),
                    f"{c['AP']:.2f}",
                    f"{drop:+.2f} [{iv['AP_drop'][0]:.2f}, {iv['AP_drop'][1]:.2f}]",
                    f"{100 * c['compute_saved']:.1f}% [{100 * iv['compute_saved'][0]:.0f}, "
                    f"{100 * iv['compute_saved'][1]:.0f}]",
                    f"{100 * c['exit_rate']:.1f}%",
                    f"{100 * best[r]['compute_saved']:.1f}%" if best[r]["target_met"] else "none",
                ]
            )
    headers = [
        "split",
        "router (threshold from calib)",
        "AP",
        "AP drop [95% CI]",
        "compute saved [95% CI]",
        "exit rate",
        f"diagnostic: best in split within {args.max_ap_drop}",
    ]
    print()
    print(tabulate(rows, headers=headers, tablefmt="github"))
    for name in args.splits:
        s = summary[name]
        b = s["base"]["AP"]
        print(
            f"{name}: base AP {b:.2f}; evaluator saves "
            f"{100 * s['calibrated']['evaluator']['compute_saved']:.1f}% at an AP drop of "
            f"{b - s['calibrated']['evaluator']['AP']:+.2f}; evaluator / confidence "
            + (
                "n/a (confidence saves nothing)"
                if math.isnan(s["evaluator_vs_confidence"])
                else f"{s['evaluator_vs_confidence']:.2f}x"
            )
            + ", evaluator / marginal-AP oracle "
            + (
                "n/a"
                if math.isnan(s["evaluator_share_of_marginal_oracle"])
                else f"{100 * s['evaluator_share_of_marginal_oracle']:.0f}%"
            )
        )
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__}
    print("machine:", machine)
    atomic_save_json(
        {
            "machine": machine,
            "costs": costs,
            "max_ap_drop": args.max_ap_drop,
            "calibration": {
                k: result.calibration_split[k] for k in ("base", "saver", "chosen_by_router")
            },
            "splits": summary,
        },
        os.path.join(args.out_dir, "routing_accuracy.json"),
    )


if __name__ == "__main__":
    main()
