"""
Routing overhead: wall time of the routed TinySaver model at batch sizes 1 and 8 against the base
alone (speedup_vs_base) and against the ideal t_saver + t_eval + (1 - r) * t_base, every part
measured separately in the same run on the same images, at the calibrated threshold. Prints a
table and writes JSON. On a CUDA machine it also runs at COCO-like sizes (about 800x1333 images).

    python bench/routing_overhead.py \
        --config-file configs/Synthetic/tinysaver_R18_cascade_R18.yaml \
        MODEL.WEIGHTS output/demo/tinysaver/model_final.pth \
        MODEL.TINYSAVER.CALIBRATION_FILE output/demo/calibration/calibration.json
"""

import argparse
import json
import os
import platform
import time

import numpy as np
import torch
from tabulate import tabulate

from detectron2.modeling import build_model
from tinysaver_det.config import load_config
from tinysaver_det.engine.trainer import load_weights
from tinysaver_det.flops import first_test_inputs


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats: int):
    """Median over `repeats` runs of fn(), after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def batches(inputs, size):
    return [inputs[i : i + size] for i in range(0, len(inputs), size)]


@torch.no_grad()
def measure(model, inputs, batch_size: int, repeats: int) -> dict:
    """Seconds per image of each part and of the routed model, on the same images."""
    device = model.device
    n = len(inputs)
    groups = batches(inputs, batch_size)
    saver_in = [model.saver_inputs(g) for g in groups]
    t_saver = timed(lambda: [model.saver(g) for g in saver_in], device, repeats) / n
    # The evaluator's cost: summarising the saver's features plus the head, i.e. run_saver minus
    # the saver.
    t_saver_and_summary = timed(lambda: [model.run_saver(g) for g in groups], device, repeats) / n
    summaries = [model.run_saver(g)[1] for g in groups]
    t_head = timed(lambda: [model.evaluator.scores(s) for s in summaries], device, repeats) / n
    t_eval = max(0.0, t_saver_and_summary - t_saver) + t_head
    t_base = timed(lambda: [model.run_base(g) for g in groups], device, repeats) / n
    outputs = [o for g in groups for o in model(g)]
    exit_rate = float(np.mean([o["tinysaver"]["exited"] for o in outputs]))
    t_routed = timed(lambda: [model(g) for g in groups], device, repeats) / n
    ideal = t_saver + t_eval + (1 - exit_rate) * t_base
    return {
        "batch_size": batch_size,
        "images": n,
        "exit_rate": exit_rate,
        "t_saver_ms": 1e3 * t_saver,
        "t_eval_ms": 1e3 * t_eval,
        "t_base_ms": 1e3 * t_base,
        "t_ideal_ms": 1e3 * ideal,
        "t_routed_ms": 1e3 * t_routed,
        "overhead": t_routed / ideal - 1,
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
    parser.add_argument("--repeats", type=int, default=3)
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
        for bs in (1, 8)
    ]
    if torch.cuda.is_available() and model.device.type == "cuda":
        big = coco_like_inputs(args.num_images)
        runs += [
            {
                "inputs": "random 800x1333",
                "device": torch.cuda.get_device_name(),
                **measure(model, big, bs, args.repeats),
            }
            for bs in (1, 8)
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
        "t_ideal_ms",
        "t_routed_ms",
        "overhead",
        "speedup_vs_base",
    ]
    table = [[round(r[k], 3) if isinstance(r[k], float) else r[k] for k in keys] for r in runs]
    print(tabulate(table, headers=keys, tablefmt="github"))
    print("machine:", machine)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"machine": machine, "runs": runs}, f, indent=2)


if __name__ == "__main__":
    main()
