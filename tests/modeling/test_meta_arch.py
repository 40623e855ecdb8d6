"""TinySaverRCNN end to end on CPU with the real (randomly initialised) synthetic saver and base."""

import copy
import math
import pickle
from pathlib import Path

import pytest
import torch

import tinysaver_det  # noqa: F401  (registers TinySaverRCNN and the evaluator heads)
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from tinysaver_det.checkpoint import load_tinysaver_weights
from tinysaver_det.config import load_config
from tinysaver_det.metrics.per_image import per_image_quality
from tinysaver_det.modeling.meta_arch import (
    SUMMARY_KEY,
    TARGET_KEY,
    gt_in_output_frame,
    padded_shape,
    resize_inputs,
)
from tinysaver_det.modeling.routing import stable_uniform

SYNTHETIC = Path(__file__).resolve().parents[2] / "configs" / "Synthetic"
SAVER_YAML = SYNTHETIC / "saver_retinanet_R_18_FPN.yaml"
BASE_YAML = SYNTHETIC / "base_cascade_rcnn_R_18_FPN.yaml"
INF = float("inf")
# Two sizes, the first one twice: after resizing they stay different, so the batch mixes sizes.
SIZES = [(150, 170), (190, 160), (150, 170), (170, 150)]


def write_tinysaver_yaml(folder: Path, saver=SAVER_YAML, base=BASE_YAML, extra: str = "") -> Path:
    path = folder / "tinysaver.yaml"
    path.write_text(
        'MODEL:\n  META_ARCHITECTURE: "TinySaverRCNN"\n  TINYSAVER:\n'
        f'    SAVER:\n      CONFIG_FILE: "{saver}"\n    BASE:\n      CONFIG_FILE: "{base}"\n{extra}'
    )
    return path


def build(cfg, seed: int):
    torch.manual_seed(seed)
    model = build_model(cfg)
    # A randomly initialised RetinaNet starts from the focal-loss prior (scores ~0.01): it would
    # detect nothing above its test threshold. Random logit biases give it detections to compare.
    with torch.no_grad():
        model.saver.head.cls_score.bias.normal_(0.0, 2.0)
    model.eval()
    return model


@pytest.fixture(scope="module", autouse=True)
def batch_invariant_kernels():
    """
    oneDNN (mkldnn) convolutions on the CPU accumulate in a batch-size dependent order: the base's
    backbone features of an image differ at float32 rounding level (~1e-6 relative) between a batch
    of one and a batch of two equally sized images. That is the kernel, not the routing; with oneDNN
    off, CPU convolutions are batch invariant, so these tests can demand exact equality.
    `test_default_kernels_agree_to_float_rounding` covers the default kernels.
    """
    with torch.backends.mkldnn.flags(enabled=False):
        yield


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    return load_config(
        str(write_tinysaver_yaml(tmp_path_factory.mktemp("cfg"))), ["MODEL.DEVICE", "cpu"]
    )


@pytest.fixture(scope="module")
def model(cfg):
    return build(cfg, seed=0)


@pytest.fixture(autouse=True)
def restore(model):
    """Tests may change settings, modes or evaluator state of the shared model: put them back."""
    state = copy.deepcopy(model.evaluator.state_dict())
    yield
    model.eval()
    model.threshold, model.router = 0.5, "evaluator"
    model.evaluator.load_state_dict(state)
    model.zero_grad(set_to_none=True)


def make_inputs(sizes=SIZES, seed=0, with_gt=False):
    g = torch.Generator().manual_seed(seed)
    inputs = []
    for i, (h, w) in enumerate(sizes):
        x = {
            "image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g),
            "height": h,
            "width": w,
            "image_id": i,
        }
        if with_gt:
            gt = Instances((h, w))
            gt.gt_boxes = Boxes(
                torch.tensor([[10.0, 12.0, 60.0, 70.0], [80.0, 40.0, w - 5.0, h - 8.0]])
            )
            gt.gt_classes = torch.tensor([i % 6, (i + 2) % 6])
            x["instances"] = gt
        inputs.append(x)
    return inputs


@pytest.fixture(scope="module")
def inputs():
    return make_inputs()


def assert_same_instances(a: Instances, b: Instances, exact=True):
    assert a.image_size == b.image_size
    assert len(a) == len(b)
    if exact:
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        assert torch.equal(a.scores, b.scores)
    else:
        torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor, atol=1e-5, rtol=0)
        torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=0)
    assert torch.equal(a.pred_classes, b.pred_classes)


def alone(detector, inputs, size):
    """A sub-model on its own, one image at a time, on the inputs resized for it."""
    with torch.no_grad():
        return [detector([x])[0] for x in resize_inputs(inputs, size)]


@pytest.fixture(scope="module")
def saver_alone(model, inputs):
    outputs = alone(model.saver, inputs, model.saver_input_size)
    assert all(len(o["instances"]) for o in outputs)  # something to compare
    return outputs


@pytest.fixture(scope="module")
def base_alone(model, inputs):
    outputs = alone(model.base, inputs, model.base_input_size)
    assert all(len(o["instances"]) for o in outputs)
    return outputs


@pytest.fixture
def base_calls(model):
    calls = []
    handle = model.base.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    yield calls
    handle.remove()


def run(model, inputs):
    with torch.no_grad():
        return model(inputs)


# ------------------------------------------------------------------------- thresholds and paths
def test_threshold_minus_inf_every_image_exits_with_the_saver_output(
    model, inputs, saver_alone, base_calls
):
    model.threshold = -INF
    outputs = run(model, inputs)
    assert [o["tinysaver"]["exited"] for o in outputs] == [True] * len(inputs)
    assert [o["tinysaver"]["path"] for o in outputs] == ["saver"] * len(inputs)
    for out, ref in zip(outputs, saver_alone):
        assert_same_instances(out["instances"], ref["instances"])
    assert base_calls == []  # nothing routed: the base never runs


def test_same_size_images_match_the_saver_run_on_the_whole_resized_batch(model, inputs):
    # The saver called directly on a batch of equally sized images gives what TinySaver gives.
    same = [inputs[0], inputs[2]]
    model.threshold = -INF
    with torch.no_grad():
        ref = model.saver(resize_inputs(same, model.saver_input_size))
    for out, r in zip(run(model, same), ref):
        assert_same_instances(out["instances"], r["instances"])


def test_images_that_pad_alike_share_one_batch_and_get_their_own_results(model):
    # Two sizes that stay different after each sub-model's resize but pad to one multiple of 32:
    # one call per sub-model, and each image's result is the one it gets alone.
    pair = make_inputs([(150, 160), (150, 165)], seed=3)
    for resize, detector in ((model.saver_inputs, model.saver), (model.base_inputs, model.base)):
        a, b = (x["image"] for x in resize(pair))
        assert a.shape != b.shape
        assert padded_shape(detector, a) == padded_shape(detector, b)
    calls = []
    hooks = [
        m.register_forward_hook(lambda _m, i, _o, name=name: calls.append((name, len(i[0]))))
        for name, m in (("saver", model.saver), ("base", model.base))
    ]
    model.threshold = INF
    try:
        outputs = run(model, pair)
    finally:
        for h in hooks:
            h.remove()
    assert calls == [("saver", 2), ("base", 2)]
    for out, ref in zip(outputs, alone(model.base, pair, model.base_input_size)):
        assert_same_instances(out["instances"], ref["instances"])
    model.threshold = -INF
    for out, ref in zip(run(model, pair), alone(model.saver, pair, model.saver_input_size)):
        assert_same_instances(out["instances"], ref["instances"])


def test_padded_shape_follows_the_backbones_padding():
    class Backbone:
        size_divisibility, padding_constraints = 32, {}

    class Detector:
        backbone = Backbone()

    image = torch.zeros(3, 96, 109)
    assert padded_shape(Detector(), image) == (96, 128)
    Backbone.padding_constraints = {"size_divisibility": 64}
    assert padded_shape(Detector(), image) == (128, 128)
    Backbone.padding_constraints = {"square_size": 1024}
    assert padded_shape(Detector(), image) == (1024, 1024)
    Backbone.size_divisibility, Backbone.padding_constraints = 0, {}
    assert padded_shape(Detector(), image) == (96, 109)
    assert padded_shape(object(), image) == (96, 109)  # no detectron2 backbone: the exact shape


def test_threshold_inf_every_image_goes_to_the_base(model, inputs, base_alone, base_calls):
    model.threshold = INF
    outputs = run(model, inputs)
    assert [o["tinysaver"]["exited"] for o in outputs] == [False] * len(inputs)
    assert [o["tinysaver"]["path"] for o in outputs] == ["base"] * len(inputs)
    for out, ref in zip(outputs, base_alone):
        assert_same_instances(out["instances"], ref["instances"])
    # One base call per group of equally sized images, covering every image once.
    assert sorted(base_calls) == [1, 1, 2]


def test_outputs_are_standard_and_at_the_requested_size(model, inputs):
    for x, out in zip(inputs, run(model, inputs)):
        assert set(out) == {"instances", "tinysaver"}
        assert out["instances"].image_size == (x["height"], x["width"])
        assert set(out["tinysaver"]) == {"score", "exited", "path", "router"}


def test_outputs_requested_at_another_resolution(model):
    x = make_inputs([(150, 170)])[0]
    x.update(height=75, width=85)
    for thr in (-INF, INF):
        model.threshold = thr
        assert run(model, [x])[0]["instances"].image_size == (75, 85)


@pytest.mark.parametrize("threshold", ["median", -INF, INF])
def test_results_do_not_depend_on_the_rest_of_the_batch(model, inputs, threshold):
    if threshold == "median":
        scores = [o["tinysaver"]["score"] for o in run(model, inputs)]
        threshold = sorted(scores)[len(scores) // 2]  # some exit, some are routed
    model.threshold = threshold
    batch = run(model, inputs)
    if threshold not in (-INF, INF):
        assert {o["tinysaver"]["path"] for o in batch} == {"saver", "base"}
    reversed_batch = run(model, inputs[::-1])[::-1]
    for i, x in enumerate(inputs):
        single = run(model, [x])[0]
        for other in (batch[i], reversed_batch[i]):
            assert other["tinysaver"] == single["tinysaver"]
            assert_same_instances(other["instances"], single["instances"])


def test_default_kernels_agree_to_float_rounding(model, inputs):
    # With oneDNN on (the default), only float32 rounding may differ between batch compositions.
    model.threshold = INF
    with torch.backends.mkldnn.flags(enabled=True):
        batch = run(model, inputs)
        singles = [run(model, [x])[0] for x in inputs]
    for a, b in zip(batch, singles):
        assert a["tinysaver"]["path"] == b["tinysaver"]["path"]
        ia, ib = a["instances"], b["instances"]
        assert len(ia) == len(ib)
        torch.testing.assert_close(ia.pred_boxes.tensor, ib.pred_boxes.tensor, rtol=1e-5, atol=1e-3)
        torch.testing.assert_close(ia.scores, ib.scores, rtol=1e-5, atol=1e-5)
        assert torch.equal(ia.pred_classes, ib.pred_classes)


def test_evaluator_scores_do_not_depend_on_the_batch(model, inputs):
    _, summary = model.run_saver(inputs)
    g = torch.Generator().manual_seed(0)
    big = torch.cat([summary, summary[:1] + torch.randn(29, summary.shape[1], generator=g)])
    with torch.no_grad():
        batch = model.evaluator.scores(big)
        singles = torch.cat([model.evaluator.scores(row[None]) for row in big])
        shuffled = model.evaluator.scores(big.flip(0)).flip(0)
    assert torch.equal(batch, singles) and torch.equal(batch, shuffled)
    assert model.evaluator.scores(big[:0]).shape == (0,)


# ------------------------------------------------------------------------- broken evaluator
@pytest.mark.parametrize("value", [float("nan"), INF, -INF])
def test_nan_or_inf_evaluator_scores_never_exit(model, inputs, base_alone, value):
    last = model.evaluator.mlp[-1]
    assert isinstance(last, torch.nn.Linear)
    with torch.no_grad():
        last.bias.fill_(value)
    model.threshold = -INF
    outputs = run(model, inputs)
    for out, ref in zip(outputs, base_alone):
        assert not math.isfinite(out["tinysaver"]["score"])
        assert out["tinysaver"]["exited"] is False
        assert_same_instances(out["instances"], ref["instances"])


# ------------------------------------------------------------------------------------- routers
def test_every_router_runs(model):
    inputs = make_inputs(with_gt=True)
    for router in ("evaluator", "confidence", "random", "oracle"):
        model.router = router
        outputs = run(model, inputs)
        assert len(outputs) == len(inputs)
        for x, out in zip(inputs, outputs):
            assert out["tinysaver"]["router"] == router
            assert out["instances"].image_size == (x["height"], x["width"])
            assert out["tinysaver"]["exited"] == (out["tinysaver"]["score"] >= model.threshold)


def test_confidence_router_scores_by_the_saver_top_detection(model, inputs, saver_alone):
    model.router = "confidence"
    top = [float(r["instances"].scores.max()) if len(r["instances"]) else 0.0 for r in saver_alone]
    model.threshold = sorted(top)[len(top) // 2]
    outputs = run(model, inputs)
    assert [o["tinysaver"]["score"] for o in outputs] == top
    assert [o["tinysaver"]["exited"] for o in outputs] == [t >= model.threshold for t in top]
    exited = [o["tinysaver"]["exited"] for o in outputs]
    assert any(exited) and not all(exited)


def test_random_router_is_fixed_by_image_id_and_seed(model, inputs):
    model.router = "random"
    outputs = run(model, inputs)
    expected = [stable_uniform(str(x["image_id"]), model.random_seed) for x in inputs]
    scores = [o["tinysaver"]["score"] for o in outputs]
    torch.testing.assert_close(torch.tensor(scores), torch.tensor(expected))
    assert [o["tinysaver"]["score"] for o in run(model, inputs[::-1])][::-1] == scores


def test_oracle_router_needs_ground_truth(model, inputs):
    model.router = "oracle"
    with pytest.raises(ValueError, match="instances"):
        run(model, inputs)


def test_gt_in_output_frame_scales_boxes_to_the_requested_size():
    gt = Instances((100, 200))
    gt.gt_boxes = Boxes(torch.tensor([[10.0, 20.0, 50.0, 80.0]]))
    gt.gt_classes = torch.tensor([3])
    image = torch.zeros(3, 100, 200, dtype=torch.uint8)
    x = {"image": image, "instances": gt, "height": 150, "width": 100}
    scaled = gt_in_output_frame(x)
    assert scaled.image_size == (150, 100)
    torch.testing.assert_close(scaled.gt_boxes.tensor, torch.tensor([[5.0, 30.0, 25.0, 120.0]]))
    assert scaled.gt_classes.tolist() == [3]
    assert gt_in_output_frame(dict(x, height=100, width=200)) is gt  # same size: unchanged


def test_oracle_scores_are_minus_the_base_gain_at_the_requested_size(model):
    """
    Inputs at half the requested size; each image's ground truth is the saver's top detection
    (mapped back into the input tensor's frame), so the saver's AP there is 1 and the oracle's
    score is 1 minus the base's AP. Scoring against ground truth left in the tensor's frame would
    give the saver an AP of 0.
    """
    inputs = make_inputs(sizes=[(150, 170), (170, 150)], seed=3)
    for x in inputs:
        x.update(height=2 * x["image"].shape[1], width=2 * x["image"].shape[2])
    saver_out = alone(model.saver, inputs, model.saver_input_size)
    base_out = alone(model.base, inputs, model.base_input_size)
    expected = []
    for x, s, b in zip(inputs, saver_out, base_out):
        top = s["instances"][int(s["instances"].scores.argmax())]
        # The ground truth as the output frame sees it.
        in_output = Instances((x["height"], x["width"]))
        in_output.gt_boxes, in_output.gt_classes = top.pred_boxes, top.pred_classes
        gt = Instances(tuple(x["image"].shape[-2:]))
        gt.gt_boxes, gt.gt_classes = Boxes(top.pred_boxes.tensor / 2), top.pred_classes
        x["instances"] = gt
        assert per_image_quality(in_output, s["instances"]) == pytest.approx(1.0)
        expected.append(-(per_image_quality(in_output, b["instances"]) - 1.0))
    model.router = "oracle"
    model.threshold = 0.5
    outputs = run(model, inputs)
    scores = [o["tinysaver"]["score"] for o in outputs]
    assert scores == pytest.approx(expected, abs=1e-6)
    assert [o["tinysaver"]["exited"] for o in outputs] == [s >= 0.5 for s in expected]


def test_unknown_router_is_refused(model, cfg):
    with pytest.raises(ValueError, match="ROUTER"):
        model.router = "nope"
    bad = cfg.clone()
    bad.MODEL.TINYSAVER.ROUTER = "nope"
    with pytest.raises(ValueError, match="ROUTER"):
        build_model(bad)


def test_threshold_is_changeable_and_nan_refused(model, inputs):
    model.threshold = 0.3
    assert model.threshold == 0.3
    for bad in (float("nan"), None, "abc", True):
        with pytest.raises(ValueError, match="MODEL.TINYSAVER.THRESHOLD"):
            model.threshold = bad
    assert model.threshold == 0.3
    scores = [o["tinysaver"]["score"] for o in run(model, inputs)]
    model.threshold = max(scores)
    exited = [o["tinysaver"]["exited"] for o in run(model, inputs)]
    assert exited == [s >= max(scores) for s in scores]


# ------------------------------------------------------------------------------------ training
def test_train_mode_keeps_saver_and_base_frozen(model):
    model.train()
    assert model.training and model.evaluator.training
    assert not model.saver.training and not model.base.training
    assert not any(m.training for m in model.saver.modules())
    assert not any(m.training for m in model.base.modules())
    assert not any(p.requires_grad for p in model.saver.parameters())
    assert not any(p.requires_grad for p in model.base.parameters())
    assert all(p.requires_grad for p in model.evaluator.parameters())


def _check_training_step(model, inputs):
    model.train()
    with EventStorage(0) as storage:
        losses = model(inputs)
    assert losses and all(k.startswith("loss_") for k in losses), sorted(losses)
    for k, v in losses.items():
        assert v.dim() == 0 and torch.isfinite(v), (k, v)
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.evaluator.parameters())
    assert any(p.grad.abs().sum() > 0 for p in model.evaluator.parameters())
    assert all(p.grad is None for p in model.saver.parameters())
    assert all(p.grad is None for p in model.base.parameters())
    assert "tinysaver/target_mean" in storage.histories()


@pytest.mark.parametrize("target", ["saver_ap", "ap_gain"])
def test_training_step_with_ground_truth(model, target):
    old = model.evaluator.target
    model.evaluator.target = target
    try:
        _check_training_step(model, make_inputs(with_gt=True))
    finally:
        model.evaluator.target = old


def test_training_step_with_precomputed_summaries(model, inputs):
    _, summary = model.run_saver(inputs)
    cached = [
        {"image_id": i, SUMMARY_KEY: summary[i].numpy(), TARGET_KEY: 0.2 * i}
        for i in range(len(inputs))
    ]
    _check_training_step(model, cached)


# ---------------------------------------------------------------------------------- checkpoints
def test_whole_checkpoint_round_trip(model, cfg, inputs, tmp_path):
    model.threshold = -INF  # exercise the evaluator scores and the saver
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("tinysaver")
    fresh = build(cfg, seed=1)
    fresh.threshold = -INF
    before = run(fresh, inputs)
    after = run(model, inputs)
    assert any(b["tinysaver"]["score"] != o["tinysaver"]["score"] for b, o in zip(before, after))
    c = cfg.clone()
    c.MODEL.WEIGHTS = str(tmp_path / "tinysaver.pth")
    load_tinysaver_weights(fresh, c)
    for a, b in zip(run(fresh, inputs), run(model, inputs)):
        assert a["tinysaver"] == b["tinysaver"]
        assert_same_instances(a["instances"], b["instances"])
    model.threshold = fresh.threshold = INF
    for a, b in zip(run(fresh, inputs), run(model, inputs)):
        assert_same_instances(a["instances"], b["instances"])


@pytest.fixture(scope="module")
def part_checkpoints(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    DetectionCheckpointer(model.saver, save_dir=str(folder)).save("saver")
    DetectionCheckpointer(model.base, save_dir=str(folder)).save("base")
    DetectionCheckpointer(model, save_dir=str(folder)).save("whole")
    return {k: str(folder / f"{k}.pth") for k in ("saver", "base", "whole")}


def with_weights(cfg, saver="", base="", whole=""):
    c = cfg.clone()
    c.MODEL.TINYSAVER.SAVER.WEIGHTS = saver
    c.MODEL.TINYSAVER.BASE.WEIGHTS = base
    c.MODEL.WEIGHTS = whole
    return c


def test_saver_and_base_checkpoints_load_into_their_parts(
    model, cfg, inputs, part_checkpoints, saver_alone, base_alone
):
    fresh = build(cfg, seed=2)
    load_tinysaver_weights(
        fresh, with_weights(cfg, part_checkpoints["saver"], part_checkpoints["base"])
    )
    for a, b in zip(alone(fresh.saver, inputs, fresh.saver_input_size), saver_alone):
        assert_same_instances(a["instances"], b["instances"])
    for a, b in zip(alone(fresh.base, inputs, fresh.base_input_size), base_alone):
        assert_same_instances(a["instances"], b["instances"])
    fresh.threshold = INF
    for a, b in zip(run(fresh, inputs), base_alone):
        assert_same_instances(a["instances"], b["instances"])


def test_wrong_architecture_checkpoint_is_refused(cfg, part_checkpoints):
    fresh = build(cfg, seed=3)
    with pytest.raises(ValueError, match=r"base\.pth.*saver"):
        load_tinysaver_weights(fresh, with_weights(cfg, saver=part_checkpoints["base"]))
    with pytest.raises(ValueError, match=r"saver\.pth.*base"):
        load_tinysaver_weights(fresh, with_weights(cfg, base=part_checkpoints["saver"]))


def test_whole_checkpoint_as_saver_weights_gets_a_hint(cfg, part_checkpoints):
    fresh = build(cfg, seed=3)
    with pytest.raises(ValueError, match=r"whole\.pth.*MODEL\.WEIGHTS"):
        load_tinysaver_weights(fresh, with_weights(cfg, saver=part_checkpoints["whole"]))


def test_single_detector_checkpoint_as_model_weights_gets_a_hint(cfg, part_checkpoints):
    fresh = build(cfg, seed=3)
    with pytest.raises(ValueError, match=r"saver\.pth.*MODEL\.TINYSAVER\.SAVER\.WEIGHTS"):
        load_tinysaver_weights(fresh, with_weights(cfg, whole=part_checkpoints["saver"]))


def test_truncated_checkpoint_names_the_file(cfg, part_checkpoints, tmp_path):
    data = Path(part_checkpoints["saver"]).read_bytes()
    broken = tmp_path / "truncated_saver.pth"
    broken.write_bytes(data[: len(data) // 2])
    fresh = build(cfg, seed=3)
    with pytest.raises(Exception, match="truncated_saver.pth") as info:
        load_tinysaver_weights(fresh, with_weights(cfg, saver=str(broken)))
    assert "saver" in str(info.value).replace(str(broken), "")


def test_missing_checkpoint_names_the_file(cfg, tmp_path):
    fresh = build(cfg, seed=3)
    with pytest.raises(Exception, match="does_not_exist.pth"):
        load_tinysaver_weights(fresh, with_weights(cfg, saver=str(tmp_path / "does_not_exist.pth")))


def test_model_zoo_pkl_loads_into_the_saver(model, cfg, inputs, saver_alone, tmp_path):
    path = tmp_path / "saver_zoo.pkl"
    state = {k: v.detach().cpu().numpy() for k, v in model.saver.state_dict().items()}
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "test"}, f)
    fresh = build(cfg, seed=4)
    load_tinysaver_weights(fresh, with_weights(cfg, saver=str(path)))
    for k, v in model.saver.state_dict().items():
        assert torch.equal(fresh.saver.state_dict()[k], v), k
    for a, b in zip(alone(fresh.saver, inputs, fresh.saver_input_size), saver_alone):
        assert_same_instances(a["instances"], b["instances"])


# -------------------------------------------------------------------------------- sub-configs
def test_missing_sub_config_names_the_key(tmp_path):
    path = write_tinysaver_yaml(tmp_path, saver="no_such_saver.yaml")
    cfg = load_config(str(path), ["MODEL.DEVICE", "cpu"])
    key = r"MODEL\.TINYSAVER\.SAVER\.CONFIG_FILE"
    with pytest.raises(FileNotFoundError, match=key + r".*no_such_saver\.yaml"):
        build_model(cfg)


def test_saver_and_base_must_agree_on_classes(tmp_path):
    (tmp_path / "base5.yaml").write_text(
        f'_BASE_: "{BASE_YAML}"\nMODEL:\n  ROI_HEADS:\n    NUM_CLASSES: 5\n'
    )
    path = write_tinysaver_yaml(tmp_path, base="base5.yaml")
    cfg = load_config(str(path), ["MODEL.DEVICE", "cpu"])
    assert cfg.MODEL.TINYSAVER.BASE.CONFIG_FILE == str(tmp_path / "base5.yaml")
    with pytest.raises(ValueError, match="classes"):
        build_model(cfg)


def test_tinysaver_config_as_sub_config_is_refused(tmp_path, cfg):
    inner = write_tinysaver_yaml(tmp_path)
    outer_dir = tmp_path / "outer"
    outer_dir.mkdir()
    path = write_tinysaver_yaml(outer_dir, saver=inner)
    with pytest.raises(ValueError, match="itself a TinySaver config"):
        build_model(load_config(str(path), ["MODEL.DEVICE", "cpu"]))
