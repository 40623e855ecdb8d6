#!/usr/bin/env python
"""
Generate the synthetic detection splits under the dataset root:

    python datasets/prepare_synthetic.py [--root DIR] [--scale 1.0] [--splits train calib ...]

Writes <root>/synthetic/<split>/*.jpg and <root>/synthetic/annotations/instances_<split>.json;
splits already generated with the same spec are reused.
"""

import argparse
import json
import os
import time

from tinysaver_det.data.synthetic import SYNTHETIC_SPLITS, prepare_all


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument(
        "--root",
        default=os.getenv("DETECTRON2_DATASETS", "datasets"),
        help="dataset root (default: $DETECTRON2_DATASETS or ./datasets)",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply every split's image count (e.g. 0.05 for a quick run)",
    )
    parser.add_argument(
        "--splits",
        nargs="+",
        choices=list(SYNTHETIC_SPLITS),
        default=None,
        help="splits to generate (default: all)",
    )
    args = parser.parse_args(argv)

    start = time.perf_counter()
    written = prepare_all(args.root, scale=args.scale, splits=args.splits)
    elapsed = time.perf_counter() - start
    total = 0
    for split, json_file in written.items():
        with open(json_file) as f:
            data = json.load(f)
        total += len(data["images"])
        print(
            f"synthetic_{split}: {len(data['images'])} images, {len(data['annotations'])} boxes"
            f" -> {json_file}"
        )
    print(f"{total} images under {os.path.join(args.root, 'synthetic')} in {elapsed:.1f}s")


if __name__ == "__main__":
    main()
