#!/usr/bin/env python
"""
Choose the routing threshold of a trained TinySaver model on its calibration split and report it on
the test splits, from cached saver and base predictions. Writes to OUTPUT_DIR: calibration.json
(picked up through MODEL.TINYSAVER.CALIBRATION_FILE), config_calibrated.yaml (the config to deploy:
absolute paths, so it runs from any directory, and its own OUTPUT_DIR, OUTPUT_DIR/eval) and PNG
plots.

    python tools/calibrate.py \
        --config-file configs/Synthetic/tinysaver_R18_cascade_R18.yaml \
        MODEL.WEIGHTS output/synthetic/tinysaver/model_final.pth
    # a compute budget instead of the default AP drop of at most 0.5 points:
    ... MODEL.TINYSAVER.CALIBRATION.GFLOPS_BUDGET 2.0
"""

from detectron2.engine import default_argument_parser
from tinysaver_det.engine.calibrate import calibrate, format_results
from tinysaver_det.engine.setup import launch_tool, setup_cfg
from tinysaver_det.engine.trainer import Trainer, check_inference_weights, load_weights


def main(args):
    cfg = setup_cfg(args)
    check_inference_weights(cfg, resume=args.resume)
    model = Trainer.build_model(cfg)
    load_weights(model, cfg, resume=args.resume)
    model.eval()
    cal = cfg.MODEL.TINYSAVER.CALIBRATION
    if not cal.DATASET:
        raise ValueError(
            "MODEL.TINYSAVER.CALIBRATION.DATASET is empty: name the split to choose thresholds on"
        )
    reports = [d for d in cfg.DATASETS.TEST if d != cal.DATASET]
    result = calibrate(
        cfg,
        model,
        dataset=cal.DATASET,
        report_datasets=reports,
        max_ap_drop=cal.MAX_AP_DROP,
        gflops_budget=cal.GFLOPS_BUDGET,
    )
    print(format_results(result))
    return result


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
    launch_tool(main, args)


if __name__ == "__main__":
    invoke_main()  # pragma: no cover
