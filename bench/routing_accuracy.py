"""
Accuracy for compute: compute saved at an AP drop of at most 0.5 points against the base, for the
evaluator, confidence, random and oracle routers, on a held-out synthetic split (another seed) and on
a shifted split (harder mix, other backgrounds). Two readings per split:
- "calibrated": the threshold chosen on the calibration split, applied as deployed;
- "best in split": the cheapest point of the split's own sweep within the AP drop (a ceiling for
  what a perfectly calibrated threshold of that router could save there).
Prints tables, writes JSON and the accuracy-compute plot of each split.

    python bench/routing_accuracy.py MODEL.WEIGHTS output/demo/tinysaver/model_final.pth \
        MODEL.TINYSAVER.SAVER.WEIGHTS output/demo/saver/model_final.pth \
        MODEL.TINYSAVER.BASE.WEIGHTS output/demo/base/model_final.pth
"""
import argparse
import json
import math
import os
import platform

import torch
from tabulate import tabulate

from detectron2.modeling import build_model

from tinysaver_det.config import load_config
from tinysaver_det.engine.calibrate import CachedSplit, calibrate
from tinysaver_det.engine.trainer import load_weights
from tinysaver_det.evaluation.calibration import choose_point, sweep
from tinysaver_det.evaluation.plots import plot_accuracy_compute


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    result = calibrate(cfg, model, dataset=cfg.MODEL.TINYSAVER.CALIBRATION.DATASET, report_datasets=args.splits,
                       max_ap_drop=args.max_ap_drop, output_dir=args.out_dir)
    costs = result["costs"]
    rows, summary = [], {}
    for name in args.splits:
        split = CachedSplit(cfg, model, name)
        base = split.alone("base", costs)
        saver = split.alone("saver", costs)
        curves = {r: sweep(split.table, s, costs) for r, s in split.scores.items()}
        best = {r: choose_point(p, base["AP"], max_ap_drop=args.max_ap_drop) for r, p in curves.items()}
        calibrated = result["reports"][name]["routers"]
        plot_accuracy_compute(curves, base, saver, best["evaluator"], os.path.join(args.out_dir, f"{name}_accuracy_vs_gflops.png"),
                              title=f"{name}: AP against GFLOPs per image", max_ap_drop=args.max_ap_drop)
        summary[name] = {"base": base, "saver": saver, "calibrated": calibrated, "best_in_split": best}
        for r in curves:
            c, b = calibrated[r], best[r]
            rows.append([name, r, f"{base['AP']:.2f}", f"{c['AP']:.2f}", f"{c['AP'] - base['AP']:+.2f}",
                         f"{100 * c['compute_saved']:.1f}%", f"{100 * b['compute_saved']:.1f}%" if b["target_met"] else "none"])
        for reading, points in (("calibrated", calibrated), ("best_in_split", best)):
            ev, conf, orc = (points[r]["compute_saved"] for r in ("evaluator", "confidence", "oracle"))
            # A ratio only means something when the denominator saves compute; else it is left as NaN.
            summary[name][f"{reading}_evaluator_vs_confidence"] = ev / conf if conf > 0 else float("nan")
            summary[name][f"{reading}_evaluator_share_of_oracle"] = ev / orc if orc > 0 else float("nan")
    headers = ["split", "router", "base AP", "AP (calibrated t)", "AP drop", "saved (calibrated t)", f"saved, best within {args.max_ap_drop} drop"]
    print(tabulate(rows, headers=headers, tablefmt="github"))
    for name in args.splits:
        for reading in ("calibrated", "best_in_split"):
            saved = {r: 100 * summary[name][reading][r]["compute_saved"] for r in ("evaluator", "confidence", "oracle")}
            vs_conf = summary[name][f"{reading}_evaluator_vs_confidence"]
            share = summary[name][f"{reading}_evaluator_share_of_oracle"]
            print(f"{name} ({reading.replace('_', ' ')}): saved: evaluator {saved['evaluator']:.1f}%, confidence "
                  f"{saved['confidence']:.1f}%, oracle {saved['oracle']:.1f}%; evaluator / confidence "
                  + ("n/a (confidence saves nothing)" if math.isnan(vs_conf) else f"{vs_conf:.2f}x")
                  + ", evaluator / oracle " + ("n/a" if math.isnan(share) else f"{100 * share:.0f}%"))
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__}
    print("machine:", machine)
    with open(os.path.join(args.out_dir, "routing_accuracy.json"), "w") as f:
        json.dump({"machine": machine, "costs": costs, "splits": summary}, f, indent=2)


if __name__ == "__main__":
    main()
