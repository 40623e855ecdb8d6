"""
Routing overhead: wall time of the routed TinySaver model at batch sizes 1 and 8 against the base
alone (speedup_vs_base) and against the ideal t_saver + t_eval + t_base_routed, every part measured
separately in the same run on the same images, at the calibrated threshold. t_base_routed is the
base's time on the images the routed model sends it (per image of the whole set); the formula with
the base's mean time, t_saver + t_eval + (1 - r) * t_base, is reported beside it
(overhead_vs_mean_base): at batch 8 the routed images reach the base in sub-batches of about
(1 - r) * 8, not in batches of 8. The parts take turns in each timing round. Prints a table and
writes JSON. On a CUDA machine it also runs at COCO-like sizes (about 800x1333 images).

    python bench/routing_overhead.py \
        --config-file configs/Synthetic/tinysaver_R18_cascade_R18.yaml \
        MODEL.WEIGHTS output/demo/tinysaver/model_final.pth \
        MODEL.TINYSAVER.CALIBRATION_FILE output/demo/calibration/calibration.json
"""

import argparse
import os
import platform
import time
from typing import Callable, Dict, List

import numpy as np
import torch
from tabulate import tabulate

from detectron2.modeling import build_model
from tinysaver_det.config import load_config
from tinysaver_det.engine.trainer import load_weights
from tinysaver_det.flops import first_test_inputs
from tinysaver_det.utils.atomic import atomic_save_json


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(parts: Dict[str, Callable[[], object]], device, repeats: int) -> Dict[str, float]:
    """
    Median seconds of each part over `repeats` rounds, after one warm-up round. The parts take
    turns within each round, so a slow spell of the machine hits them all alike and their ratios
    hold better than if each part ran its repeats in one block.
    """
    times: Dict[str, List[float]] = {name: [] for name in parts}
    for round_ in range(repeats + 1):
        for name, fn in parts.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            if round_ > 0:
                times[name].append(time.perf_counter() - t)
    return {name: float(np.median(ts)) for name, ts in times.items()}


def batches(inputs, size):
    return [inputs[i : i + size] for i in range(0, len(inputs), size)]


@torch.no_grad()
def measure(model, inputs, batch_size: int, repeats: int) -> dict:
    """Seconds per image of each part and of the routed model, on the same images."""
    device = model.device
    n = len(inputs)
    groups = batches(inputs, batch_size)
    saver_in = [model.saver_inputs(g) for g in groups]
    summaries = [model.run_saver(g)[1] for g in groups]
    outputs = [[o["tinysaver"]["exited"] for o in model(g)] for g in groups]
    exit_rate = float(np.mean([e for exited in outputs for e in exited]))
    # What the routed model hands the base: each batch's routed images, as one sub-batch.
    routed = [[x for x, e in zip(g, exited) if not e] for g, exited in zip(groups, outputs)]
    routed = [r for r in routed if r]
    t = timed(
        {
            "saver": lambda: [model.saver(g) for g in saver_in],
            # The evaluator's cost: summarising the saver's features plus the head, i.e.
            # run_saver minus the saver.
            "saver_and_summary": lambda: [model.run_saver(g) for g in groups],
            "head": lambda: [model.evaluator.scores(s) for s in summaries],
            "base": lambda: [model.run_base(g) for g in groups],
            "base_routed": lambda: [model.run_base(r) for r in routed],
            "routed": lambda: [model(g) for g in groups],
        },
        device,
        repeats,
    )
    t = {name: seconds / n for name, seconds in t.items()}
    t_saver, t_base, t_base_routed, t_routed = t["saver"], t["base"], t["base_routed"], t["routed"]
    t_eval = max(0.0, t["saver_and_summary"] - t_saver) + t["head"]
    # The ideal: each part's time on the images it gets, in the batches it gets them (the base's
    # mean time (1 - r) * t_base assumes full batches of routed images).
    ideal = t_saver + t_eval + t_base_routed
    mean_ideal = t_saver + t_eval + (1 - exit_rate) * t_base
    return {
        "batch_size": batch_size,
        "images": n,
        "exit_rate": exit_rate,
        "t_saver_ms": 1e3 * t_saver,
        "t_eval_ms": 1e3 * t_eval,
        "t_base_ms": 1e3 * t_base,
        "t_base_routed_ms": 1e3 * t_base_routed,
        "t_ideal_ms": 1e3 * ideal,
        "t_routed_ms": 1e3 * t_routed,
        "overhead": t_routed / ideal - 1,
        # Against t_saver + t_eval + (1 - r) * t_base, with the base's mean time per image.
        "overhead_vs_mean_base": t_routed / mean_ideal - 1,
        # The routed model's images/s over the base alone's (>1: routing saves time).
        "speedup_vs_base": t_base / t_routed,
    }


def coco_like_inputs(n: int, seed: int = 0):
    """Random 800x1333-ish images (the COCO test size) for the GPU run."""
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.randint(
                0, 256, (3, 800, 1333 - 64 * (i % 3)), generator=g, dtype=torch.uint8
            ),
            "image_id": i,
        }
        for i in range(n)
    ]


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", default="configs/Synthetic/tinysaver_R18_cascade_R18.yaml")
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--out", default="output/bench/routing_overhead.json")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args()

    cfg = load_config(args.config_file, args.opts)
    model = build_model(cfg)
    load_weights(model, cfg)
    model.eval()
    inputs = first_test_inputs(cfg, cfg.DATASETS.TEST[0], args.num_images)
    runs = [
        {
            "inputs": f"{cfg.DATASETS.TEST[0]} ({args.num_images} images)",
            "device": str(model.device),
            **measure(model, inputs, bs, args.repeats),
        }
        for bs in args.batch_sizes
    ]
    if torch.cuda.is_available() and model.device.type == "cuda":
        big = coco_like_inputs(args.num_images)
        runs += [
            {
                "inputs": "random 800x1333",
                "device": torch.cuda.get_device_name(),
                **measure(model, big, bs, args.repeats),
            }
            for bs in args.batch_sizes
        ]
    machine = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "threshold": model.threshold,
    }
    keys = [
        "inputs",
        "device",
        "batch_size",
        "exit_rate",
        "t_saver_ms",
        "t_eval_ms",
        "t_base_ms",
        "t_base_routed_ms",
        "t_ideal_ms",
        "t_routed_ms",
        "overhead",
        "overhead_vs_mean_base",
        "speedup_vs_base",
    ]
    table = [[round(r[k], 3) if isinstance(r[k], float) else r[k] for k in keys] for r in runs]
    print(tabulate(table, headers=keys, tablefmt="github"))
    print("machine:", machine)
    atomic_save_json({"machine": machine, "runs": runs}, args.out)


if __name__ == "__main__":
    main()
