#!/usr/bin/env python
"""
Rank candidate savers for one base by the paper's ΔC = c_s - r* (lower is better).

    python tools/select_saver.py \
        --config-file configs/Synthetic/tinysaver_R18_cascade_R18.yaml \
        --saver configs/Synthetic/saver_retinanet_R_18_FPN.yaml output/demo/saver/model_final.pth \
        --saver other_saver.yaml other_saver.pth --dataset synthetic_train
"""

import argparse
import json

from tinysaver_det.engine.saver_selection import format_ranking, rank_savers


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config-file", required=True, help="a TinySaver config naming the base and its weights"
    )
    parser.add_argument(
        "--saver",
        nargs=2,
        action="append",
        metavar=("CONFIG", "WEIGHTS"),
        required=True,
        help="a candidate saver: its config file and checkpoint (repeat for each)",
    )
    parser.add_argument(
        "--dataset", default="synthetic_train", help="split on which r* is measured"
    )
    parser.add_argument("--json", default="", help="also write the ranking to this json file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ...")
    args = parser.parse_args()
    rows = rank_savers(args.config_file, [tuple(s) for s in args.saver], args.dataset, args.opts)
    print(format_ranking(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
