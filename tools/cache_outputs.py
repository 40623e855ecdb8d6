#!/usr/bin/env python
"""
Build (or complete) the cached saver and base outputs that evaluator training and calibration read,
ahead of those runs; on several GPUs the images are split between processes. With no --dataset it
builds the evaluator's training caches (DATASETS.TRAIN, CACHE.TRAIN_VIEWS views). For the default
saver_ap target they hold the saver only and need no base weights, so they can be built while the
base is still training; for ap_gain they run the base too.

    python tools/cache_outputs.py \
        --config-file configs/COCO-Detection/tinysaver_R18_cascade_R50.yaml \
        --num-gpus 8 MODEL.TINYSAVER.SAVER.WEIGHTS saver.pth
    # what tools/calibrate.py reads (saver and base, plain images):
    python tools/cache_outputs.py --config-file ... --dataset coco_2017_val_calib --with-base
"""

import logging

from detectron2.engine import default_argument_parser
from tinysaver_det.engine.output_cache import build_caches
from tinysaver_det.engine.setup import launch_tool, setup_cfg

logger = logging.getLogger("tinysaver_det")


def main(args):
    cfg = setup_cfg(args)
    if args.with_base and not cfg.MODEL.TINYSAVER.BASE.WEIGHTS:
        logger.warning(
            "--with-base but MODEL.TINYSAVER.BASE.WEIGHTS is empty: caching a randomly "
            "initialised base"
        )
    counts = build_caches(cfg, args.dataset, views=args.views, with_base=args.with_base)
    for name, n in counts.items():
        logger.info(f"Cache of {name}: {n} records, complete")
    return counts


def invoke_main() -> None:
    parser = default_argument_parser()
    parser.add_argument(
        "--dataset",
        action="append",
        default=[],
        help="a registered dataset to cache (repeatable); default: the training caches",
    )
    parser.add_argument(
        "--views",
        type=int,
        default=None,
        help="views per image (default: CACHE.TRAIN_VIEWS for the training caches, else 1)",
    )
    parser.add_argument(
        "--with-base", action="store_true", help="also run the base (calibration needs it)"
    )
    args = parser.parse_args()
    launch_tool(main, args)


if __name__ == "__main__":
    invoke_main()  # pragma: no cover
