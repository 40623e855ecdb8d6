"""The output cache: built once, keyed, refused when stale, resumable, atomic."""

import os
import uuid

import numpy as np
import pytest
import torch
from conftest import QUICK_SCALE, UNTRAINED_ON_CPU

import tinysaver_det  # noqa: F401
from detectron2.modeling import build_model
from tinysaver_det.config import load_config
from tinysaver_det.data.datasets import register_synthetic
from tinysaver_det.data.synthetic import generate_split, split_spec
from tinysaver_det.engine.output_cache import (
    OutputCache,
    build_caches,
    cache_is_complete,
    cached_examples,
)
from tinysaver_det.modeling.meta_arch import SUMMARY_KEY, TARGET_KEY

CONFIG = os.path.join(
    os.path.dirname(__file__), "..", "..", "configs", "Synthetic", "tinysaver_R18_cascade_R18.yaml"
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Six generated calibration images, registered under a unique name."""
    root = str(tmp_path_factory.mktemp("data"))
    spec = split_spec("calib", scale=0.01)
    generate_split(root, "calib", spec, num_images=6, progress=False)
    prefix = f"cachetest{uuid.uuid4().hex[:6]}"
    register_synthetic(root, prefix=prefix)
    return f"{prefix}_calib"


@pytest.fixture
def cfg(tmp_path):
    cfg = load_config(
        CONFIG,
        [
            *UNTRAINED_ON_CPU,
            "MODEL.TINYSAVER.CACHE.CHUNK_SIZE",
            "4",
            "MODEL.TINYSAVER.CACHE.DIR",
            str(tmp_path / "cache"),
        ],
    )
    return cfg


@pytest.fixture(scope="module")
def model():
    cfg = load_config(CONFIG, ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    return build_model(cfg).eval()


def chunk_files(cache):
    return sorted(f for f in os.listdir(cache.dir) if f.startswith("chunk_"))


def test_cache_records_and_targets(cfg, model, dataset):
    cache = OutputCache(cfg, dataset, views=2, with_base=True, model=model)
    records = cache.load_or_build()
    assert len(records) == 12  # 6 images x 2 views
    assert chunk_files(cache) == ["chunk_00000.npz", "chunk_00001.npz"]
    # A random saver still detects.
    assert any(len(r["saver"]["scores"]) for r in records if r["view"] == 0)
    for r in records:
        assert 0.0 <= r["saver_ap"] <= 1.0 and 0.0 <= r["base_ap"] <= 1.0
        assert r["summary"].shape == (model.evaluator.summary_dim,)
        assert torch.isfinite(r["summary"]).all()
    plain = [r for r in records if r["view"] == 0]
    assert all(len(r["saver"]["scores"]) <= 100 and "base" in r for r in plain)
    for r in plain:
        top = float(max(r["saver"]["scores"], default=0.0))
        assert r["confidence"] == pytest.approx(top, abs=1e-6)
    examples = cached_examples([cache], "ap_gain")
    assert examples[0][TARGET_KEY] == pytest.approx(records[0]["base_ap"] - records[0]["saver_ap"])
    np.testing.assert_array_equal(examples[0][SUMMARY_KEY], records[0]["summary"])


def rng_state():
    _, keys, pos, *_ = np.random.get_state()
    return keys.copy(), pos


def test_augmented_views_are_reproducible_and_leave_numpys_global_rng_alone(
    cfg, model, dataset, tmp_path
):
    # The training sampler draws its seed from np.random after the cache is built: building must
    # leave that stream as it found it, or a run that builds its cache trains on another order
    # than a rerun that reads it.
    np.random.seed(123)
    keys, pos = rng_state()
    first = OutputCache(cfg, dataset, views=3, model=model).load_or_build()
    after_keys, after_pos = rng_state()
    assert np.array_equal(after_keys, keys) and after_pos == pos
    np.random.seed(7)  # another global state, another folder: the same augmented views
    other = cfg.clone()
    other.MODEL.TINYSAVER.CACHE.DIR = str(tmp_path / "other")
    second = OutputCache(other, dataset, views=3, model=model).load_or_build()
    assert [(r["view"], r["saver_ap"]) for r in second] == [
        (r["view"], r["saver_ap"]) for r in first
    ]
    assert all(torch.equal(a["summary"], b["summary"]) for a, b in zip(first, second))


def test_cache_is_reused_and_resumes_missing_chunks(cfg, model, dataset):
    cache = OutputCache(cfg, dataset, views=1, model=model)
    first = cache.load_or_build()
    paths = [os.path.join(cache.dir, f) for f in chunk_files(cache)]
    mtimes = [os.path.getmtime(p) for p in paths]
    again = OutputCache(cfg, dataset, views=1, model=model).load_or_build()
    assert [os.path.getmtime(p) for p in paths] == mtimes  # nothing recomputed
    assert [r["saver_ap"] for r in again] == [r["saver_ap"] for r in first]
    # An interrupted build: the second chunk is missing and a stray temporary file is left.
    os.remove(paths[1])
    open(os.path.join(cache.dir, ".tmp-partialchunk_00001.npz"), "wb").write(b"half")
    resumed = OutputCache(cfg, dataset, views=1, model=model).load_or_build()
    assert os.path.getmtime(paths[0]) == mtimes[0]  # the finished chunk was kept
    assert os.path.isfile(paths[1])
    assert [r["saver_ap"] for r in resumed] == [r["saver_ap"] for r in first]
    assert torch.equal(
        torch.stack([r["summary"] for r in resumed]), torch.stack([r["summary"] for r in first])
    )


def counting_saver_runs(model, monkeypatch) -> dict:
    """Counts the saver's forward passes of `model` (each still runs the real saver)."""
    calls = {"n": 0}
    real = model.run_saver

    def run_saver(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "run_saver", run_saver)
    return calls


def test_a_cache_with_the_base_reuses_the_saver_only_cache(
    cfg, model, dataset, monkeypatch, tmp_path
):
    OutputCache(cfg, dataset, views=2, model=model).load_or_build()  # the saver's half, ahead
    apart = cfg.clone()
    apart.MODEL.TINYSAVER.CACHE.DIR = str(tmp_path / "from_scratch")
    scratch = OutputCache(apart, dataset, views=2, with_base=True, model=model).load_arrays()
    saver_runs = counting_saver_runs(model, monkeypatch)
    reused = OutputCache(cfg, dataset, views=2, with_base=True, model=model).load_arrays()
    assert saver_runs["n"] == 0  # only the base ran
    assert sorted(reused) == sorted(scratch)
    for column, values in scratch.items():
        np.testing.assert_array_equal(reused[column], values, err_msg=column)


def test_a_saver_only_cache_of_another_saver_is_not_reused(
    cfg, model, dataset, monkeypatch, tmp_path
):
    torch.manual_seed(1)
    other = build_model(load_config(CONFIG, ["MODEL.DEVICE", "cpu"])).eval()
    theirs = OutputCache(cfg, dataset, views=1, model=other).load_arrays()
    apart = cfg.clone()
    apart.MODEL.TINYSAVER.CACHE.DIR = str(tmp_path / "from_scratch")
    scratch = OutputCache(apart, dataset, views=1, with_base=True, model=model).load_arrays()
    saver_runs = counting_saver_runs(model, monkeypatch)
    mine = OutputCache(cfg, dataset, views=1, with_base=True, model=model).load_arrays()
    assert saver_runs["n"] == 6  # every image ran this model's saver
    np.testing.assert_array_equal(mine["summary"], scratch["summary"])
    assert not np.array_equal(mine["summary"], theirs["summary"])


def test_interrupted_build_keeps_finished_chunks(cfg, model, dataset, monkeypatch):
    cache = OutputCache(cfg, dataset, views=1, model=model)
    calls = {"n": 0}
    original = OutputCache._image_records

    def failing(self, *args):
        calls["n"] += 1
        if calls["n"] > 4:  # the first chunk (4 images) completes, then the run "dies"
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(OutputCache, "_image_records", failing)
    with pytest.raises(KeyboardInterrupt):
        cache.load_or_build()
    assert chunk_files(cache) == ["chunk_00000.npz"]
    monkeypatch.setattr(OutputCache, "_image_records", original)
    records = OutputCache(cfg, dataset, views=1, model=model).load_or_build()
    assert len(records) == 6


def test_stale_cache_is_refused(cfg, model, dataset):
    OutputCache(cfg, dataset, views=1, model=model).load_or_build()
    other = build_model(load_config(CONFIG, ["MODEL.DEVICE", "cpu"])).eval()
    with torch.no_grad():
        next(other.saver.parameters()).add_(1.0)  # another saver checkpoint
    with pytest.raises(ValueError, match="saver_weights"):
        OutputCache(cfg, dataset, views=1, model=other).load_or_build()
    cfg2 = cfg.clone()
    cfg2.INPUT.MAX_SIZE_TEST = 400  # another config
    with pytest.raises(ValueError, match="input"):
        OutputCache(cfg2, dataset, views=1, model=model).load_or_build()


def test_unwritable_cache_dir_gives_a_clear_error(cfg, model, dataset, tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache folder should go")
    cfg.MODEL.TINYSAVER.CACHE.DIR = str(blocker)
    with pytest.raises(OSError, match="not_a_dir"):
        OutputCache(cfg, dataset, views=1, model=model).load_or_build()


def test_training_caches_built_ahead_are_what_training_reads(cfg, model, dataset):
    """tools/cache_outputs.py without --dataset: the training caches, saver only for the saver_ap
    target, TRAIN_VIEWS."""
    cfg.DATASETS.TRAIN = (dataset,)
    cfg.MODEL.TINYSAVER.CACHE.TRAIN_VIEWS = 2
    cfg.MODEL.TINYSAVER.EVALUATOR.TARGET = "saver_ap"
    assert not cache_is_complete(cfg, dataset, 2, False)
    assert build_caches(cfg, model=model) == {dataset: 12}
    assert cache_is_complete(cfg, dataset, 2, False)
    assert not cache_is_complete(cfg, dataset, 2, True)
    cache = OutputCache(cfg, dataset, views=cfg.MODEL.TINYSAVER.CACHE.TRAIN_VIEWS, model=model)
    paths = [os.path.join(cache.dir, f) for f in chunk_files(cache)]
    mtimes = [os.path.getmtime(p) for p in paths]
    records = cache.load_or_build()
    assert [os.path.getmtime(p) for p in paths] == mtimes  # reused, not recomputed
    assert len(records) == 12 and all("base_ap" not in r for r in records)


def test_caches_need_a_tinysaver_config(dataset):
    saver_cfg = load_config(
        os.path.join(os.path.dirname(CONFIG), "saver_cascade_rcnn_R_18_FPN.yaml")
    )
    with pytest.raises(ValueError, match="META_ARCHITECTURE"):
        build_caches(saver_cfg, [dataset])


def test_ap_gain_training_reads_a_cache_with_the_base(cfg, model, dataset):
    """EVALUATOR.TARGET ap_gain: the trainer's loader caches the base too, trains on its AP gain."""
    from tinysaver_det.engine.trainer import Trainer

    cfg.DATASETS.TRAIN = (dataset,)
    cfg.MODEL.TINYSAVER.CACHE.TRAIN_VIEWS = 1
    cfg.MODEL.TINYSAVER.EVALUATOR.TARGET = "ap_gain"
    cfg.SOLVER.IMS_PER_BATCH = 6
    cfg.DATALOADER.NUM_WORKERS = 0
    torch.manual_seed(0)  # the loader builds its own randomly initialised model
    batch = next(iter(Trainer.build_train_loader(cfg)))
    assert cache_is_complete(cfg, dataset, 1, True)
    assert not cache_is_complete(cfg, dataset, 1, False)
    torch.manual_seed(0)  # the same model again, so its cache key matches and the cache is read
    records = OutputCache(cfg, dataset, views=1, with_base=True).load_or_build()
    gains = sorted(r["base_ap"] - r["saver_ap"] for r in records)
    assert sorted(b[TARGET_KEY] for b in batch) == pytest.approx(gains)


def test_targets_of_trained_detectors_on_plain_and_augmented_views(tmp_path, trained_detectors):
    """
    With the session's trained saver and base, the targets are not all zero, and those of augmented
    views (outputs and ground truth both in the augmented frame) are on the plain views' scale:
    ground truth left in the original frame would score a resized view's detections near 0.
    """
    td = trained_detectors
    cfg = td.tinysaver_config(
        tmp_path / "cache",
        "INPUT.MIN_SIZE_TRAIN",
        "(96,)",
        "INPUT.MAX_SIZE_TRAIN",
        "144",  # views resized by ~0.5x
    )
    records = OutputCache(cfg, f"{td.prefix}_calib", views=2, with_base=True).load_or_build()
    for part in ("saver_ap", "base_ap"):
        plain = [r[part] for r in records if r["view"] == 0]
        augmented = [r[part] for r in records if r["view"] == 1]
        assert len(plain) == len(augmented) == split_spec("calib", QUICK_SCALE).num_images
        assert all(0.0 <= v <= 1.0 for v in plain + augmented)
        assert sum(plain) > 0 and sum(augmented) > 0.25 * sum(plain), (part, plain, augmented)
    base_gain = [r["base_ap"] - r["saver_ap"] for r in records]
    assert max(base_gain) > 0  # the base is better somewhere: ap_gain targets are not all zero


def test_marginal_targets_are_each_images_effect_on_the_split(tmp_path, trained_detectors):
    """
    TARGET marginal_ap: every cached view of an image carries that image's effect on the split's
    AP (N x the AP change / 100), recomputed here by full MatchTable evaluations of the plain views.
    """
    import numpy as np

    from tinysaver_det.data.checks import checked_dataset_dicts
    from tinysaver_det.engine.output_cache import cached_examples
    from tinysaver_det.evaluation.detections import record_dets
    from tinysaver_det.evaluation.ground_truth import dataset_ground_truth
    from tinysaver_det.metrics.coco_fast import MatchTable

    td = trained_detectors
    name = f"{td.prefix}_calib"
    cfg = td.tinysaver_config(
        tmp_path / "cache",
        "MODEL.TINYSAVER.EVALUATOR.TARGET",
        "marginal_ap",
    )
    cache = OutputCache(cfg, name, views=2, with_base=True)
    examples = cached_examples([cache], "marginal_ap")
    records = cache.load_or_build()
    assert len(examples) == len(records)
    per_image = {}
    for r, t in zip(records, examples.target):
        per_image.setdefault(r["index"], set()).add(float(t))
    assert all(len(v) == 1 for v in per_image.values())  # both views: the image's value

    plain = sorted((r for r in records if r["view"] == 0), key=lambda r: r["image_id"])
    gts = dataset_ground_truth(name, checked_dataset_dicts([name]))
    table = MatchTable.build(
        [gts[r["index"]] for r in plain],
        {s: [record_dets(r[s]) for r in plain] for s in ("saver", "base")},
    )
    n = len(plain)
    base_ap = table.coco_metrics(np.ones(n, int))["AP"]
    for k, r in enumerate(plain):
        choice = np.ones(n, int)
        choice[k] = 0
        want = n * (table.coco_metrics(choice)["AP"] - base_ap) / 100
        assert per_image[r["index"]].pop() == pytest.approx(want, abs=1e-9)
    assert np.abs(examples.target).max() > 0


def test_a_detector_configs_fingerprint_ignores_tinysavers_own_settings():
    """Caches are keyed by the detectors' configs; the TinySaver keys every loaded config carries
    (other than the RegNet backbone's shape) decide nothing about a detector's outputs."""
    from tinysaver_det.config import load_sub_config
    from tinysaver_det.engine.output_cache import config_fingerprint

    saver = load_sub_config(load_config(CONFIG, ["MODEL.DEVICE", "cpu"]), "SAVER")
    fingerprint = config_fingerprint(saver)
    other = saver.clone()
    other.defrost()
    other.MODEL.TINYSAVER.CALIBRATION.UCB_LEVEL = 0.5  # e.g. a key added by a later version
    other.MODEL.TINYSAVER.ROUTER = "confidence"
    assert config_fingerprint(other) == fingerprint
    other.MODEL.TINYSAVER.REGNET.DEPTH = 7  # shapes a registered backbone
    assert config_fingerprint(other) != fingerprint
    other = saver.clone()
    other.defrost()
    other.MODEL.RPN.POST_NMS_TOPK_TEST = 7
    assert config_fingerprint(other) != fingerprint
