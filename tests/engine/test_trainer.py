"""engine/trainer.py, through tools/train_net.py and calibrate.py: refusals, no stale results."""
import importlib.util
import json
from pathlib import Path

import pytest

import tinysaver_det  # noqa: F401  (registers the meta-architecture, heads and datasets)
from detectron2.engine import default_argument_parser

REPO = Path(__file__).resolve().parents[2]
TINYSAVER_YAML = REPO / "configs" / "Synthetic" / "tinysaver_R18_cascade_R18.yaml"


def tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def args_for(out: Path, *opts, eval_only=True):
    argv = ["--config-file", str(TINYSAVER_YAML)] + (["--eval-only"] if eval_only else [])
    argv += ["MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(out), "MODEL.TINYSAVER.SAVER.WEIGHTS", "",
             "MODEL.TINYSAVER.BASE.WEIGHTS", "", *map(str, opts)]
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
        tool("train_net").main(args_for(tmp_path / "out", "MODEL.WEIGHTS", ""))
    assert not results.exists()  # a failed rerun leaves no earlier results that look current


def test_calibration_without_the_trained_evaluator_is_refused(tmp_path):
    with pytest.raises(ValueError, match="MODEL.WEIGHTS is empty"):
        tool("calibrate").main(args_for(tmp_path / "out", "MODEL.WEIGHTS", "", eval_only=False))


def test_a_missing_checkpoint_names_the_key_and_the_path_and_leaves_no_stale_results(tmp_path):
    results = stale_results(tmp_path / "out")
    missing = tmp_path / "no_such_model.pth"
    with pytest.raises(FileNotFoundError, match=rf"{missing.name}.*MODEL\.WEIGHTS"):
        tool("train_net").main(args_for(tmp_path / "out", "MODEL.WEIGHTS", missing))
    assert not results.exists()
