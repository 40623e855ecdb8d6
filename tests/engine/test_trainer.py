"""engine/trainer.py: refusals, no stale results, checked checkpoints and resume, DDP on the CPU."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import UNTRAINED_ON_CPU, load_tool

import tinysaver_det  # noqa: F401  (registers the meta-architecture, heads and datasets)
from detectron2.engine import default_argument_parser

REPO = Path(__file__).resolve().parents[2]
TINYSAVER_YAML = REPO / "configs" / "Synthetic" / "tinysaver_R18_cascade_R18.yaml"
SAVER_INSTANT_YAML = REPO / "configs" / "Synthetic" / "saver_instant_test.yaml"


def args_for(out: Path, *opts, eval_only=True):
    argv = ["--config-file", str(TINYSAVER_YAML)] + (["--eval-only"] if eval_only else [])
    argv += [*UNTRAINED_ON_CPU, "OUTPUT_DIR", str(out), *map(str, opts)]
    return default_argument_parser().parse_args(argv)


def stale_results(out: Path) -> Path:
    path = out / "inference" / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"synthetic_val": {"bbox": {"AP": 99.0}}}))
    return path


def test_eval_only_without_the_trained_evaluator_is_refused(tmp_path):
    # An empty MODEL.WEIGHTS left the evaluator randomly initialised: meaningless routing, exit 0.
    results = stale_results(tmp_path / "out")
    with pytest.raises(ValueError, match="MODEL.WEIGHTS is empty"):
        load_tool("train_net").main(args_for(tmp_path / "out", "MODEL.WEIGHTS", ""))
    assert not results.exists()  # a failed rerun leaves no earlier results that look current


def test_calibration_without_the_trained_evaluator_is_refused(tmp_path):
    with pytest.raises(ValueError, match="MODEL.WEIGHTS is empty"):
        load_tool("calibrate").main(
            args_for(tmp_path / "out", "MODEL.WEIGHTS", "", eval_only=False)
        )


def test_a_missing_checkpoint_names_the_key_and_the_path_and_leaves_no_stale_results(tmp_path):
    results = stale_results(tmp_path / "out")
    missing = tmp_path / "no_such_model.pth"
    with pytest.raises(FileNotFoundError, match=rf"{missing.name}.*MODEL\.WEIGHTS"):
        load_tool("train_net").main(args_for(tmp_path / "out", "MODEL.WEIGHTS", missing))
    assert not results.exists()


def saver_trainer(dataset: str, out: Path, max_iter: int):
    from tinysaver_det.config import load_config
    from tinysaver_det.engine.trainer import Trainer

    cfg = load_config(
        str(SAVER_INSTANT_YAML),
        [
            "MODEL.DEVICE",
            "cpu",
            "OUTPUT_DIR",
            str(out),
            "DATASETS.TRAIN",
            f"('{dataset}',)",
            "DATASETS.TEST",
            "()",
            "SOLVER.MAX_ITER",
            str(max_iter),
            "SOLVER.CHECKPOINT_PERIOD",
            "2",
            "SOLVER.IMS_PER_BATCH",
            "2",
            "SOLVER.WARMUP_ITERS",
            "1",
        ],
    )
    return Trainer(cfg)


def test_training_checkpoints_through_the_checked_checkpointer_and_resumes(
    tmp_path, synthetic_split
):
    from detectron2.engine import hooks
    from tinysaver_det.checkpoint import CheckedCheckpointer

    dataset = synthetic_split("train", 4, "resume")
    out = tmp_path / "saver"
    torch.manual_seed(0)
    first = saver_trainer(dataset, out, max_iter=3)
    # The checked checkpointer from the start: the periodic checkpoints go through it too.
    (periodic,) = [h for h in first._hooks if isinstance(h, hooks.PeriodicCheckpointer)]
    assert isinstance(first.checkpointer, CheckedCheckpointer)
    assert periodic.checkpointer is first.checkpointer
    first.resume_or_load(resume=False)
    assert first.start_iter == 0
    first.train()
    checkpoints = {p.name for p in out.iterdir() if p.suffix == ".pth"}
    assert checkpoints == {"model_0000001.pth", "model_final.pth"}
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]  # written atomically
    trained = {k: v.clone() for k, v in first.model.state_dict().items()}

    resumed = saver_trainer(dataset, out, max_iter=5)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 3  # model_final was written after iteration 2
    assert resumed.scheduler.last_epoch == first.scheduler.last_epoch == 3
    state = resumed.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in trained.items())
    resumed.train()
    assert resumed.iter == 5 and resumed.scheduler.last_epoch == 5  # iterations 3 and 4 only
    assert torch.load(out / "model_final.pth", weights_only=False)["iteration"] == 4

    # A truncated last checkpoint is refused by name on resume, not loaded half-way.
    final = out / "model_final.pth"
    final.write_bytes(final.read_bytes()[:1000])
    with pytest.raises(RuntimeError, match="model_final.pth"):
        saver_trainer(dataset, out, max_iter=6).resume_or_load(resume=True)


def wrap_on_cpu(result_file: str) -> None:
    """One of two gloo processes: wrap a CPU model and take one synchronised backward pass."""
    from detectron2.utils import comm
    from tinysaver_det.engine.setup import end_distributed
    from tinysaver_det.engine.trainer import create_ddp_model_any_device

    torch.manual_seed(0)
    model = create_ddp_model_any_device(torch.nn.Linear(3, 1), broadcast_buffers=False)
    rank = comm.get_rank()
    model(torch.full((1, 3), float(rank + 1))).sum().backward()
    if comm.is_main_process():
        Path(result_file).write_text(
            json.dumps(
                {
                    "type": type(model).__name__,
                    "device_ids": model.device_ids,
                    "grad": model.module.weight.grad.tolist(),
                }
            )
        )
    del model  # DDP's reducer before its process group
    end_distributed()


def test_the_ddp_wrapper_works_for_a_cpu_model(tmp_path):
    from detectron2.engine import launch
    from detectron2.utils import comm
    from tinysaver_det.engine.trainer import create_ddp_model_any_device

    single = torch.nn.Linear(3, 1)
    assert comm.get_world_size() == 1 and create_ddp_model_any_device(single) is single
    result_file = tmp_path / "result.json"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch(wrap_on_cpu, 2, dist_url=f"tcp://127.0.0.1:{port}", args=(str(result_file),))
    result = json.loads(result_file.read_text())
    assert result["type"] == "DistributedDataParallel" and not result["device_ids"]
    # Gradients are averaged over the two processes: inputs 1 and 2 give 1.5 for every weight.
    assert result["grad"] == [[1.5, 1.5, 1.5]]


def test_train_net_trains_under_launch_with_two_cpu_processes(tmp_path):
    """tools/train_net.py --num-gpus 2 on the CPU: detectron2's launch with gloo, DDP over two
    processes; both exit cleanly (train_net ends the process group) and the run checkpoints."""
    from tinysaver_det.data.synthetic import prepare_all

    data = tmp_path / "data"
    prepare_all(str(data), scale=0.02, splits=["train", "val"], progress=False)
    out = tmp_path / "saver"
    cmd = [sys.executable, str(REPO / "tools" / "train_net.py"), "--num-gpus", "2"]
    cmd += ["--config-file", str(SAVER_INSTANT_YAML), "MODEL.DEVICE", "cpu"]
    cmd += ["SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0"]
    cmd += ["OUTPUT_DIR", str(out)]
    env = dict(os.environ, DETECTRON2_DATASETS=str(data), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "terminate called" not in proc.stderr
    assert (out / "log.txt.rank1").is_file()  # a second process ran
    assert torch.load(out / "model_final.pth", weights_only=False)["iteration"] == 2


@pytest.mark.parametrize("target", ["saver_ap", "ap_gain"])
def test_the_held_out_cache_runs_the_base_only_for_targets_that_need_it(
    tmp_path, target, trained_detectors
):
    from tinysaver_det.engine.hooks import RankCorrelationHook
    from tinysaver_det.engine.output_cache import OutputCache
    from tinysaver_det.engine.trainer import Trainer

    d = trained_detectors
    held_out = f"{d.prefix}_val"  # not the calibration split, whose cache needs the base anyway
    cfg = d.tinysaver_config(
        tmp_path / "cache",
        "MODEL.TINYSAVER.EVALUATOR.TARGET",
        target,
        "MODEL.TINYSAVER.CALIBRATION.DATASET",
        f"{d.prefix}_calib",
        "MODEL.TINYSAVER.CALIBRATION.HELD_OUT_DATASET",
        held_out,
        "DATASETS.TRAIN",
        f"('{d.prefix}_train',)",
        "OUTPUT_DIR",
        str(tmp_path / "train"),
    )
    trainer = Trainer(cfg)
    (hook,) = [h for h in trainer._hooks if isinstance(h, RankCorrelationHook)]
    needs_base = target != "saver_ap"
    built = {p.name for p in (tmp_path / "cache").iterdir()}
    assert (f"{held_out}_1views_base" in built) is needs_base
    assert (f"{held_out}_1views" in built) is not needs_base
    arrays = OutputCache(cfg, held_out, views=1, with_base=needs_base).load_arrays()
    # saver_ap: the saver's per-image AP; ap_gain: minus the base's gain over it (higher = exit).
    expected = arrays["saver_ap"] - (arrays["base_ap"] if needs_base else 0.0)
    assert len(hook._truth) == len(arrays["saver_ap"]) > 0
    assert hook._truth.tolist() == pytest.approx(expected.tolist())
