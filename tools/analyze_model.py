#!/usr/bin/env python
"""
GFLOPs per image and parameter counts of a config, measured with detectron2's FlopCountAnalysis on
real images of its first test set (like detectron2's tools/analyze_model.py, aware of TinySaver:
saver, evaluator and base are counted separately, with c_s and c_e against the base).

The configured weights are loaded first (MODEL.WEIGHTS; for TinySaver also SAVER/BASE.WEIGHTS), as
tools/train_net.py --eval-only does: a two-stage detector's box heads cost what the proposals that
survive cost, so an untrained model's count is not the trained model's. A count on a model with
no weights is flagged in the log and in the table.

    python tools/analyze_model.py --config-file configs/Synthetic/base_cascade_rcnn_R_18_FPN.yaml \
        MODEL.WEIGHTS output/base/model_final.pth
    python tools/analyze_model.py --num-inputs 16 \
        --config-file configs/Synthetic/tinysaver_R18_cascade_R18.yaml
"""

import argparse
import json
import logging
from typing import List

from tabulate import tabulate

from detectron2.modeling import build_model
from tinysaver_det.config import load_config
from tinysaver_det.engine.trainer import is_tinysaver, load_weights
from tinysaver_det.flops import detector_gflops, first_test_inputs, tinysaver_costs

logger = logging.getLogger("tinysaver_det.analyze_model")


def count_params(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def untrained_parts(cfg) -> List[str]:
    """The parts no configured weights file covers: they are counted as randomly initialised."""
    if not is_tinysaver(cfg):
        return [] if cfg.MODEL.WEIGHTS else ["model"]
    parts = [
        p.lower()
        for p in ("SAVER", "BASE")
        if not (cfg.MODEL.TINYSAVER[p].WEIGHTS or cfg.MODEL.WEIGHTS)
    ]
    return parts + ([] if cfg.MODEL.WEIGHTS else ["evaluator"])


def analyze(config_file: str, num_inputs: int, opts) -> dict:
    if num_inputs < 1:
        raise ValueError(
            f"--num-inputs must be at least 1 (got {num_inputs}): GFLOPs are averaged "
            "over that many images of DATASETS.TEST[0]"
        )
    cfg = load_config(config_file, opts)
    model = build_model(cfg).eval()
    load_weights(model, cfg)
    untrained = untrained_parts(cfg)
    if untrained:
        logger.warning(
            f"No weights for {', '.join(untrained)}: counting a randomly initialised model. A "
            "two-stage detector's box-head GFLOPs depend on the proposals that survive, so give "
            "the trained weights (MODEL.WEIGHTS, MODEL.TINYSAVER.SAVER/BASE.WEIGHTS)."
        )
    name = cfg.DATASETS.TEST[0]
    inputs = first_test_inputs(cfg, name, num_inputs)
    if not inputs:
        raise ValueError(f"DATASETS.TEST[0] {name!r} has no images to count on")
    flag = {"untrained": ", ".join(untrained) or "none"}
    if is_tinysaver(cfg):
        costs = tinysaver_costs(model, inputs)
        costs.update(
            saver_params_m=count_params(model.saver),
            evaluator_params_m=count_params(model.evaluator),
            base_params_m=count_params(model.base),
        )
        return {**costs, **flag}
    return {
        "gflops": detector_gflops(model, inputs),
        "params_m": count_params(model),
        "num_images": len(inputs),
        **flag,
    }


def format_result(result: dict) -> str:
    lines = [
        tabulate(
            [[k, f"{v:.6g}" if isinstance(v, float) else v] for k, v in result.items()],
            headers=["quantity", "value"],
            tablefmt="github",
        )
    ]
    if "c_e" in result:
        lines.append(f"evaluator cost: {100 * result['c_e']:.4f}% of the base's GFLOPs per image")
    if result.get("untrained", "none") != "none":
        lines.append(
            f"UNTRAINED: {result['untrained']} counted with random weights; "
            "the trained model's GFLOPs may differ"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True)
    parser.add_argument(
        "--num-inputs", type=int, default=8, help="images of DATASETS.TEST[0] to average over"
    )
    parser.add_argument("--json", default="", help="also write the figures to this json file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.num_inputs < 1:
        parser.error(f"--num-inputs must be at least 1 (got {args.num_inputs})")
    logging.basicConfig(level=logging.INFO)
    result = analyze(args.config_file, args.num_inputs, args.opts)
    print(format_result(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
