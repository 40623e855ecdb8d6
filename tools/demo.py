#!/usr/bin/env python
"""
The main job on the embedded synthetic default, every stage: data, saver, base, evaluator,
calibration, evaluation, and a final table. Re-running reuses finished stages.

    python tools/demo.py --output-dir output/demo           # the full run (about 16 min on 2 CPU cores)
    python tools/demo.py --quick --output-dir /tmp/demo     # a tiny end-to-end run (a few minutes)
    python tools/demo.py --track bccd --output-dir output/demo_bccd   # real microscope images (BCCD)
"""
import argparse

from tinysaver_det.engine.demo import TRACKS, Demo


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="output/demo")
    parser.add_argument("--quick", action="store_true", help="a few images and iterations: a smoke run")
    parser.add_argument("--data-root", default="", help="dataset root (default: $DETECTRON2_DATASETS or ./datasets)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="independent stages run at once, each on its share of the CPU threads (1: one at a time)")
    parser.add_argument("--track", default="synthetic", choices=sorted(TRACKS),
                        help="the embedded default: generated shapes, or BCCD's real images (shared data)")
    args = parser.parse_args()
    Demo(args.output_dir, quick=args.quick, data_root=args.data_root or None, jobs=args.jobs,
         track=args.track).run()


if __name__ == "__main__":
    main()
