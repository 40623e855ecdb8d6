#!/usr/bin/env python
"""
GFLOPs per image and parameter counts of a config, measured with detectron2's FlopCountAnalysis on
real images of its first test set (like detectron2's tools/analyze_model.py, aware of TinySaver:
saver, evaluator and base are counted separately, with c_s and c_e against the base).

    python tools/analyze_model.py --config-file configs/Synthetic/base_cascade_rcnn_R_18_FPN.yaml
    python tools/analyze_model.py --config-file configs/Synthetic/tinysaver_R18_cascade_R18.yaml --num-inputs 16
"""
import argparse
import json

from tabulate import tabulate

from detectron2.modeling import build_model

from tinysaver_det.config import load_config
from tinysaver_det.flops import detector_gflops, first_test_inputs, tinysaver_costs


def count_params(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def analyze(config_file: str, num_inputs: int, opts) -> dict:
    cfg = load_config(config_file, opts)
    model = build_model(cfg).eval()
    inputs = first_test_inputs(cfg, cfg.DATASETS.TEST[0], num_inputs)
    if cfg.MODEL.META_ARCHITECTURE == "TinySaverRCNN":
        costs = tinysaver_costs(model, inputs)
        costs.update(
            saver_params_m=count_params(model.saver),
            evaluator_params_m=count_params(model.evaluator),
            base_params_m=count_params(model.base),
        )
        return costs
    return {"gflops": detector_gflops(model, inputs), "params_m": count_params(model), "num_images": len(inputs)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--num-inputs", type=int, default=8, help="images of DATASETS.TEST[0] to average over")
    parser.add_argument("--json", default="", help="also write the figures to this json file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ...")
    args = parser.parse_args()
    result = analyze(args.config_file, args.num_inputs, args.opts)
    print(tabulate([[k, f"{v:.6g}" if isinstance(v, float) else v] for k, v in result.items()],
                   headers=["quantity", "value"], tablefmt="github"))
    if "c_e" in result:
        print(f"evaluator cost: {100 * result['c_e']:.4f}% of the base's GFLOPs per image")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
