"""
The main job on the embedded default: generate the synthetic data, train the saver, the base and
the evaluator, calibrate the threshold, evaluate base, saver and TinySaver, and print one table.

Each stage runs the user-facing tool (tools/train_net.py, tools/cache_outputs.py, tools/calibrate.py)
in a subprocess, as a user would, and is skipped when its result exists: re-running resumes (an
interrupted training continues from its last checkpoint, an interrupted cache from its last complete
chunk).

Independent stages run side by side, each on its share of the CPU threads (`jobs`): these small
detectors use a second thread poorly (on 2 cores the saver trains as fast on one thread as on two),
so two processes on one thread each finish well before the same two one after the other. The
evaluations that measure images per second run alone, on every thread.
"""
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Callable, Dict, List, Optional, Sequence

from tabulate import tabulate

from ..config import load_config
from ..utils.atomic import atomic_save_json
from .output_cache import cache_is_complete, training_cache_spec

logger = logging.getLogger(__name__)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS_DIR = os.path.join(REPO, "configs", "Synthetic")
CONFIGS = {part: os.path.join(CONFIGS_DIR, name) for part, name in (
    ("saver", "saver_cascade_rcnn_R_18_FPN.yaml"), ("base", "base_cascade_rcnn_R_18_FPN.yaml"),
    ("tinysaver", "tinysaver_R18_cascade_R18.yaml"))}
# The quick variant (run end to end by the tests): a few images, and the instant-test configs
# (smaller inputs, a few dozen iterations; see configs/Synthetic/*_instant_test.yaml).
QUICK_SCALE = 0.02
QUICK_CONFIGS = {part: os.path.join(CONFIGS_DIR, f"{part}_instant_test.yaml") for part in CONFIGS}
# Lines of the tools' logs echoed to the console as progress.
PROGRESS = re.compile(r"eta: |copypaste: |Caching outputs|Held-out rank correlation|GFLOPs/image|Total inference time")


class Demo:
    def __init__(self, output_dir: str, quick: bool = False, data_root: Optional[str] = None, jobs: int = 2):
        self.output_dir = os.path.abspath(output_dir)
        self.quick = quick
        self.jobs = max(1, jobs)
        if not data_root:
            # The quick variant keeps its tiny dataset apart from the real default's.
            data_root = self.path("datasets") if quick else os.getenv("DETECTRON2_DATASETS", os.path.join(REPO, "datasets"))
        self.data_root = os.path.abspath(data_root)
        self.configs = QUICK_CONFIGS if quick else CONFIGS
        self.env = {**os.environ, "DETECTRON2_DATASETS": self.data_root, "PYTHONUNBUFFERED": "1"}
        self.times: Dict[str, float] = {}
        self._lock = threading.Lock()  # console lines and the set of running stages
        self._running: Dict[str, subprocess.Popen] = {}
        self._lane = threading.local()  # .threads: the CPU threads of stages run by this lane
        self._stop = threading.Event()  # set when a stage failed: side-by-side lanes start nothing new

    def path(self, *parts) -> str:
        return os.path.join(self.output_dir, *parts)

    # --- running stages ---------------------------------------------------------------------------
    def stage(self, name: str, done: bool, cmd: List[str]) -> None:
        if self._stop.is_set():
            raise RuntimeError(f"Stage {name!r} not started: another stage failed")
        if done:
            self.say(f"[demo] {name}: already done, reused")
            return
        self.say(f"[demo] {name}: {' '.join(os.path.relpath(c, REPO) if c.startswith(REPO) else c for c in cmd[1:])}")
        os.makedirs(self.path("logs"), exist_ok=True)
        log_path = self.path("logs", f"{name}.log")
        env = dict(self.env)
        threads = getattr(self._lane, "threads", None)
        if threads:
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        start = time.perf_counter()
        with open(log_path, "a") as log:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            with self._lock:
                self._running[name] = proc
                if self._stop.is_set():  # another lane failed while this stage was starting
                    proc.terminate()
            try:
                for line in proc.stdout:
                    log.write(line)
                    if PROGRESS.search(line):
                        self.say(f"  [{name}] {line.rstrip()[:170]}")
                proc.wait()
            finally:
                with self._lock:
                    self._running.pop(name, None)
        self.times[name] = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"Stage {name!r} failed (exit {proc.returncode}); see {log_path}")
        self.say(f"[demo] {name}: done in {self.times[name]:.0f} s")

    def say(self, line: str) -> None:
        with self._lock:
            print(line, flush=True)

    def side_by_side(self, *lanes: Callable[[], object]) -> List[object]:
        """
        Run independent lanes (each a sequence of stages) at once, up to `jobs` at a time, each
        stage on an equal share of the CPU threads. If one fails, the others' stages are stopped.
        """
        if self.jobs == 1 or len(lanes) == 1:
            return [lane() for lane in lanes]
        threads = max(1, (os.cpu_count() or 1) // min(self.jobs, len(lanes)))

        def in_lane(lane):
            self._lane.threads = threads
            return lane()

        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            futures = [pool.submit(in_lane, lane) for lane in lanes]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception() is not None]
            if failed:  # stop the other lanes rather than wait for them, then report the first failure
                self._stop.set()
                with self._lock:
                    for proc in self._running.values():
                        proc.terminate()
                wait(pending)
                raise failed[0].exception()
            return [f.result() for f in futures]

    def train(self, name: str, config: str, extra: List[str]) -> str:
        out = self.path(name)
        self.stage(
            f"train_{name}",
            os.path.isfile(os.path.join(out, "model_final.pth")),
            [sys.executable, "tools/train_net.py", "--config-file", config, "--resume", "OUTPUT_DIR", out]
            + extra,
        )
        return os.path.join(out, "model_final.pth")

    def evaluate(self, name: str, config: str, extra: List[str]) -> dict:
        out = self.path("eval", name)
        results = os.path.join(out, "inference", "results.json")
        self.stage(
            f"eval_{name}",
            os.path.isfile(results),
            [sys.executable, "tools/train_net.py", "--config-file", config, "--eval-only", "OUTPUT_DIR", out]
            + extra,
        )
        with open(results) as f:
            return json.load(f)

    def cache(self, name: str, done: bool, args: Sequence[str], weights: List[str]) -> None:
        """Build caches with tools/cache_outputs.py ahead of the stage that reads them."""
        self.stage(
            name, done,
            [sys.executable, "tools/cache_outputs.py", "--config-file", self.configs["tinysaver"],
             *args, "OUTPUT_DIR", self.path("logs", name)] + weights,
        )

    # --- the job ----------------------------------------------------------------------------------
    def run(self) -> dict:
        total = time.perf_counter()
        scale = QUICK_SCALE if self.quick else 1.0
        self.stage(
            "data",
            False,  # cheap, and prepare_synthetic itself reuses complete splits
            [sys.executable, "datasets/prepare_synthetic.py", "--root", self.data_root, "--scale", str(scale)],
        )
        saver_w = self.path("saver", "model_final.pth")
        base_w = self.path("base", "model_final.pth")
        cache_dir = ["MODEL.TINYSAVER.CACHE.DIR", self.path("cache")]
        sub_weights = ["MODEL.TINYSAVER.SAVER.WEIGHTS", saver_w, "MODEL.TINYSAVER.BASE.WEIGHTS", base_w] + cache_dir
        cfg = load_config(self.configs["tinysaver"], sub_weights)
        train_views, train_with_base = training_cache_spec(cfg)
        test_set = cfg.DATASETS.TEST[0]

        # Training skips its own final evaluation (DATASETS.TEST empty): the eval stages below evaluate
        # each model alone, so that their images per second compare.
        no_final_eval = ["DATASETS.TEST", "()"]

        def saver_lane():
            self.train("saver", self.configs["saver"], no_final_eval)
            if train_with_base:
                return  # the evaluator's stage caches saver and base itself, once the base is trained
            # The evaluator's training cache needs only the saver: built while the base trains.
            done = all(cache_is_complete(cfg, name, train_views, False) for name in cfg.DATASETS.TRAIN)
            self.cache("cache_train", done, [],
                       ["MODEL.TINYSAVER.SAVER.WEIGHTS", saver_w, "MODEL.TINYSAVER.BASE.WEIGHTS", ""] + cache_dir)

        self.side_by_side(saver_lane,
                          lambda: self.train("base", self.configs["base"], no_final_eval))
        # The evaluator trains (building its held-out cache) while the test split is cached for calibration.
        evaluator_w, _ = self.side_by_side(
            lambda: self.train("tinysaver", self.configs["tinysaver"], sub_weights),
            lambda: self.cache("cache_test", cache_is_complete(cfg, test_set, 1, True),
                               ["--dataset", test_set, "--with-base"], sub_weights),
        )
        calib_dir = self.path("calibration")
        self.stage(
            "calibrate",
            os.path.isfile(os.path.join(calib_dir, "calibration.json")),
            [sys.executable, "tools/calibrate.py", "--config-file", self.configs["tinysaver"],
             "OUTPUT_DIR", calib_dir, "MODEL.WEIGHTS", evaluator_w] + sub_weights,
        )
        with open(os.path.join(calib_dir, "calibration.json")) as f:
            calibration = json.load(f)
        # One after the other, on every thread: these measure images per second.
        res_saver = self.evaluate("saver", self.configs["saver"], ["MODEL.WEIGHTS", saver_w])
        res_base = self.evaluate("base", self.configs["base"], ["MODEL.WEIGHTS", base_w])
        res_ts = self.evaluate(
            "tinysaver", self.configs["tinysaver"],
            ["MODEL.WEIGHTS", evaluator_w, "MODEL.TINYSAVER.CALIBRATION_FILE", os.path.join(calib_dir, "calibration.json")]
            + sub_weights,
        )
        sizes = {p: load_config(self.configs[p]).INPUT.MIN_SIZE_TEST for p in ("saver", "base")}
        summary = self.summarize(calibration, res_saver, res_base, res_ts, sizes)
        summary["wall_time_s"] = time.perf_counter() - total
        summary["stage_times_s"] = self.times
        summary["jobs"] = self.jobs
        atomic_save_json(summary, self.path("summary.json"))
        print(summary["table"])
        print(f"\nPlots: {calib_dir}/accuracy_vs_gflops.png, score_distribution.png, examples.png")
        print(f"Wall time of this run: {summary['wall_time_s'] / 60:.1f} min, {self.jobs} stages at a time (stages: "
              + ", ".join(f"{k} {v:.0f}s" for k, v in self.times.items()) + ")")
        return summary

    @staticmethod
    def summarize(calibration: dict, res_saver: dict, res_base: dict, res_ts: dict,
                  sizes: Optional[Dict[str, int]] = None) -> dict:
        """
        One row each for base, saver and TinySaver at the chosen threshold, on the test split.
        sizes: each detector's test-time input size in pixels ("saver", "base"), for the labels.
        """
        sizes = sizes or {"saver": 88, "base": 192}
        dataset = next(iter(res_ts))
        costs = calibration["costs"]
        routing = res_ts[dataset]["routing"]

        def row(name, res, gflops, saved, exit_rate):
            bbox = res[dataset]["bbox"]
            return [name, round(bbox["AP"], 2), round(bbox["AP50"], 2), round(gflops, 3),
                    f"{100 * saved:.1f}%", f"{100 * exit_rate:.1f}%", round(res[dataset]["speed"]["images_per_second"], 2)]

        rows = [
            row(f"base (Cascade R-CNN R-18, {sizes['base']} px)", res_base, costs["base_gflops"],
                0.0, 0.0),
            row(f"saver (Cascade R-CNN R-18, {sizes['saver']} px)", res_saver,
                costs["saver_gflops"], 1 - costs["c_s"], 1.0),
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
