"""
The main job on the embedded default: generate the synthetic data, train the saver, the base and
the evaluator, calibrate the threshold, evaluate base, saver and TinySaver, and print one table.

Each stage runs the user-facing tool (tools/train_net.py, tools/calibrate.py) in a subprocess, as a
user would, and is skipped when its result exists: re-running resumes (an interrupted training
continues from its last checkpoint, an interrupted cache from its last complete chunk).
"""
import json
import logging
import os
import re
import subprocess
import sys
import time
from typing import Dict, List, Optional

from tabulate import tabulate

from ..utils.atomic import atomic_save_json

logger = logging.getLogger(__name__)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, "configs", "Synthetic")
SAVER_CONFIG = os.path.join(CONFIGS, "saver_cascade_rcnn_R_18_FPN.yaml")
BASE_CONFIG = os.path.join(CONFIGS, "base_cascade_rcnn_R_18_FPN.yaml")
TINYSAVER_CONFIG = os.path.join(CONFIGS, "tinysaver_R18_cascade_R18.yaml")

# The quick variant (run end to end by the tests): a few images, a few iterations.
QUICK_SCALE = 0.02
QUICK_OPTS = {
    "saver": ["SOLVER.MAX_ITER", "12", "SOLVER.STEPS", "(8,)", "SOLVER.WARMUP_ITERS", "4", "SOLVER.IMS_PER_BATCH", "4"],
    "base": ["SOLVER.MAX_ITER", "6", "SOLVER.STEPS", "(4,)", "SOLVER.WARMUP_ITERS", "2", "SOLVER.IMS_PER_BATCH", "4"],
    "evaluator": ["SOLVER.MAX_ITER", "30", "SOLVER.STEPS", "(20,)", "SOLVER.WARMUP_ITERS", "5",
                  "SOLVER.IMS_PER_BATCH", "8", "TEST.EVAL_PERIOD", "10", "MODEL.TINYSAVER.CACHE.TRAIN_VIEWS", "2"],
    "all": ["MODEL.TINYSAVER.CALIBRATION.FLOPS_IMAGES", "2", "MODEL.TINYSAVER.CACHE.CHUNK_SIZE", "8",
            "DATALOADER.NUM_WORKERS", "0"],
}
# Lines of the tools' logs echoed to the console as progress.
PROGRESS = re.compile(r"eta: |copypaste: |Caching outputs|Held-out rank correlation|GFLOPs/image|Total inference time")


class Demo:
    def __init__(self, output_dir: str, quick: bool = False, data_root: Optional[str] = None):
        self.output_dir = os.path.abspath(output_dir)
        self.quick = quick
        if not data_root:
            # The quick variant keeps its tiny dataset apart from the real default's.
            data_root = self.path("datasets") if quick else os.getenv("DETECTRON2_DATASETS", os.path.join(REPO, "datasets"))
        self.data_root = os.path.abspath(data_root)
        self.env = {**os.environ, "DETECTRON2_DATASETS": self.data_root, "PYTHONUNBUFFERED": "1"}
        self.times: Dict[str, float] = {}

    def path(self, *parts) -> str:
        return os.path.join(self.output_dir, *parts)

    # --- running stages ---------------------------------------------------------------------------
    def stage(self, name: str, done: bool, cmd: List[str]) -> None:
        if done:
            print(f"[demo] {name}: already done, reused", flush=True)
            return
        print(f"[demo] {name}: {' '.join(os.path.relpath(c, REPO) if c.startswith(REPO) else c for c in cmd[1:])}", flush=True)
        os.makedirs(self.path("logs"), exist_ok=True)
        log_path = self.path("logs", f"{name}.log")
        start = time.perf_counter()
        with open(log_path, "a") as log:
            proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for line in proc.stdout:
                log.write(line)
                if PROGRESS.search(line):
                    print(f"  {line.rstrip()[:180]}", flush=True)
            proc.wait()
        self.times[name] = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"Stage {name!r} failed (exit {proc.returncode}); see {log_path}")
        print(f"[demo] {name}: done in {self.times[name]:.0f} s", flush=True)

    def opts(self, which: str) -> List[str]:
        if not self.quick:
            return []
        return QUICK_OPTS["all"] + (QUICK_OPTS[which] if which != "all" else [])

    def train(self, name: str, config: str, extra: List[str]) -> str:
        out = self.path(name)
        self.stage(
            f"train_{name}",
            os.path.isfile(os.path.join(out, "model_final.pth")),
            [sys.executable, "tools/train_net.py", "--config-file", config, "--resume", "OUTPUT_DIR", out]
            + extra + self.opts("evaluator" if name == "tinysaver" else name),
        )
        return os.path.join(out, "model_final.pth")

    def evaluate(self, name: str, config: str, extra: List[str]) -> dict:
        out = self.path("eval", name)
        results = os.path.join(out, "inference", "results.json")
        self.stage(
            f"eval_{name}",
            os.path.isfile(results),
            [sys.executable, "tools/train_net.py", "--config-file", config, "--eval-only", "OUTPUT_DIR", out]
            + extra + self.opts("all"),
        )
        with open(results) as f:
            return json.load(f)

    # --- the job ----------------------------------------------------------------------------------
    def run(self) -> dict:
        total = time.perf_counter()
        scale = QUICK_SCALE if self.quick else 1.0
        self.stage(
            "data",
            False,  # cheap, and prepare_synthetic itself reuses complete splits
            [sys.executable, "datasets/prepare_synthetic.py", "--root", self.data_root, "--scale", str(scale)],
        )
        saver_w = self.train("saver", SAVER_CONFIG, [])
        base_w = self.train("base", BASE_CONFIG, [])
        sub_weights = ["MODEL.TINYSAVER.SAVER.WEIGHTS", saver_w, "MODEL.TINYSAVER.BASE.WEIGHTS", base_w,
                       "MODEL.TINYSAVER.CACHE.DIR", self.path("cache")]
        evaluator_w = self.train("tinysaver", TINYSAVER_CONFIG, sub_weights)
        calib_dir = self.path("calibration")
        self.stage(
            "calibrate",
            os.path.isfile(os.path.join(calib_dir, "calibration.json")),
            [sys.executable, "tools/calibrate.py", "--config-file", TINYSAVER_CONFIG, "OUTPUT_DIR", calib_dir,
             "MODEL.WEIGHTS", evaluator_w] + sub_weights + self.opts("all"),
        )
        with open(os.path.join(calib_dir, "calibration.json")) as f:
            calibration = json.load(f)
        res_saver = self.evaluate("saver", SAVER_CONFIG, ["MODEL.WEIGHTS", saver_w])
        res_base = self.evaluate("base", BASE_CONFIG, ["MODEL.WEIGHTS", base_w])
        res_ts = self.evaluate(
            "tinysaver", TINYSAVER_CONFIG,
            ["MODEL.WEIGHTS", evaluator_w, "MODEL.TINYSAVER.CALIBRATION_FILE", os.path.join(calib_dir, "calibration.json")]
            + sub_weights,
        )
        summary = self.summarize(calibration, res_saver, res_base, res_ts)
        summary["wall_time_s"] = time.perf_counter() - total
        summary["stage_times_s"] = self.times
        atomic_save_json(summary, self.path("summary.json"))
        print(summary["table"])
        print(f"\nPlots: {calib_dir}/accuracy_vs_gflops.png, score_distribution.png, examples.png")
        print(f"Wall time of this run: {summary['wall_time_s'] / 60:.1f} min (stages: "
              + ", ".join(f"{k} {v:.0f}s" for k, v in self.times.items()) + ")")
        return summary

    @staticmethod
    def summarize(calibration: dict, res_saver: dict, res_base: dict, res_ts: dict) -> dict:
        """One row each for base, saver and TinySaver at the chosen threshold, on the test split."""
        dataset = next(iter(res_ts))
        costs = calibration["costs"]
        routing = res_ts[dataset]["routing"]

        def row(name, res, gflops, saved, exit_rate):
            bbox = res[dataset]["bbox"]
            return [name, round(bbox["AP"], 2), round(bbox["AP50"], 2), round(gflops, 3),
                    f"{100 * saved:.1f}%", f"{100 * exit_rate:.1f}%", round(res[dataset]["speed"]["images_per_second"], 2)]

        rows = [
            row("base (Cascade R-CNN R-18)", res_base, costs["base_gflops"], 0.0, 0.0),
            row("saver (Cascade R-CNN R-18, half res)", res_saver, costs["saver_gflops"], 1 - costs["c_s"], 1.0),
            row(f"TinySaver (t={calibration['chosen']['threshold']:.3g})", res_ts, routing["gflops_per_image"],
                routing["compute_saved"], routing["exit_rate"]),
        ]
        headers = ["model", "AP", "AP50", "GFLOPs/img", "compute saved", "exit rate", "images/s"]
        return {
            "dataset": dataset,
            "rows": [dict(zip(headers, r)) for r in rows],
            "table": f"\nResults on {dataset}:\n" + tabulate(rows, headers=headers, tablefmt="github"),
            "threshold": calibration["chosen"]["threshold"],
        }
