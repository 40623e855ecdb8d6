"""tools/analyze_model.py counts the configured (loaded) model, and says when it is untrained."""

import json
import os

import pytest
import torch
from conftest import load_tool

import tinysaver_det  # noqa: F401
from detectron2.modeling import build_model
from tinysaver_det.checkpoint import load_tinysaver_weights
from tinysaver_det.config import load_config
from tinysaver_det.flops import first_test_inputs, tinysaver_costs

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
CONFIG = os.path.join(ROOT, "configs", "Synthetic", "tinysaver_R18_cascade_R18.yaml")
BASE_CONFIG = os.path.join(ROOT, "configs", "Synthetic", "base_cascade_rcnn_R_18_FPN.yaml")


@pytest.fixture(scope="module")
def dataset(synthetic_split):
    return synthetic_split("val", 1, "analyze")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, dataset):
    """
    Saver and base checkpoints. The base's RPN regresses every anchor to a box over the whole
    image, so NMS leaves one proposal per level: its box heads then cost far less than those of a
    random base, whose 100 proposals survive. What the loaded weights are decides the count.
    """
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(3)
    model = build_model(load_config(CONFIG, ["MODEL.DEVICE", "cpu"]))
    deltas = model.base.proposal_generator.rpn_head.anchor_deltas
    with torch.no_grad():
        deltas.weight.zero_()
        deltas.bias.zero_()
        deltas.bias.view(-1, 4)[:, 2:] = 4.0  # dw, dh: 54 times the anchor
    paths = {}
    for part in ("saver", "base"):
        paths[part] = str(folder / f"{part}.pth")
        torch.save({"model": getattr(model, part).state_dict()}, paths[part])
    return paths


def opts(dataset, *extra):
    return ["MODEL.DEVICE", "cpu", "DATASETS.TEST", f"('{dataset}',)", *extra]


def test_counts_the_loaded_weights(dataset, checkpoints, tmp_path, capsys):
    weights = [
        "MODEL.TINYSAVER.SAVER.WEIGHTS",
        checkpoints["saver"],
        "MODEL.TINYSAVER.BASE.WEIGHTS",
        checkpoints["base"],
    ]
    out = tmp_path / "figures.json"
    result = load_tool("analyze_model").main(
        ["--config-file", CONFIG, "--num-inputs", "1", "--json", str(out), *opts(dataset, *weights)]
    )
    printed = capsys.readouterr().out
    assert json.loads(out.read_text()) == result
    assert result["untrained"] == "evaluator" and "UNTRAINED: evaluator" in printed

    cfg = load_config(CONFIG, opts(dataset, *weights))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    load_tinysaver_weights(model, cfg)
    want = tinysaver_costs(model, first_test_inputs(cfg, dataset, 1))
    for key in ("saver_gflops", "evaluator_gflops", "base_gflops", "c_s", "c_e"):
        assert result[key] == pytest.approx(want[key], rel=1e-9), key
    random_base = tinysaver_costs(build_model(cfg).eval(), first_test_inputs(cfg, dataset, 1))
    assert result["base_gflops"] < 0.9 * random_base["base_gflops"]  # the weights matter


def test_an_untrained_model_is_flagged(dataset, capsys, caplog):
    result = load_tool("analyze_model").main(
        ["--config-file", BASE_CONFIG, "--num-inputs", "1", *opts(dataset)]
    )
    printed = capsys.readouterr().out
    assert result["untrained"] == "model" and result["gflops"] > 0
    assert "| untrained" in printed and "UNTRAINED: model" in printed
    assert any("randomly initialised" in r.message for r in caplog.records)


def test_zero_inputs_are_refused(dataset, capsys):
    tool = load_tool("analyze_model")
    with pytest.raises(SystemExit):
        tool.main(["--config-file", BASE_CONFIG, "--num-inputs", "0", *opts(dataset)])
    assert "--num-inputs must be at least 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="at least 1"):
        tool.analyze(BASE_CONFIG, 0, opts(dataset))
