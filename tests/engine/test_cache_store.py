"""The cache's array format: round trip, streaming, unreadable chunks and manifests, old formats."""

import json
import logging
import os

import numpy as np
import pytest
import torch
from conftest import UNTRAINED_ON_CPU

import tinysaver_det  # noqa: F401
from detectron2.modeling import build_model
from tinysaver_det.config import load_config
from tinysaver_det.engine.cache_store import (
    UnreadableChunk,
    arrays_to_records,
    concat_chunks,
    flat_dets,
    read_chunk,
    records_to_arrays,
    write_chunk,
)
from tinysaver_det.engine.output_cache import OutputCache, cache_is_complete

CONFIG = os.path.join(
    os.path.dirname(__file__), "..", "..", "configs", "Synthetic", "tinysaver_R18_cascade_R18.yaml"
)


def fake_records(n, with_base, rng):
    out = []
    for i in range(n):
        r = {
            "image_id": 100 + i,
            "index": i,
            "view": i % 2,
            "saver_ap": rng.random(),
            "confidence": rng.random(),
            "summary": torch.randn(5),
        }
        if with_base:
            r["base_ap"] = rng.random()
        for src in ("saver", "base") if with_base else ("saver",):
            if r["view"] == 0:
                d = rng.integers(0, 4)
                r[src] = {
                    "boxes": rng.random((d, 4)).astype(np.float32),
                    "scores": rng.random(d).astype(np.float32),
                    "category_ids": rng.integers(1, 9, d),
                }
        out.append(r)
    return out


@pytest.mark.parametrize("with_base", [False, True])
def test_chunk_round_trip_and_concatenation(tmp_path, with_base):
    rng = np.random.default_rng(0)
    key = {"format": 2, "views": [1, 2]}
    recs = [fake_records(5, with_base, rng), fake_records(3, with_base, rng)]
    for c, r in enumerate(recs):
        write_chunk(str(tmp_path / f"c{c}.npz"), key, records_to_arrays(r))
    chunks = [read_chunk(str(tmp_path / f"c{c}.npz"), key) for c in range(2)]
    back = arrays_to_records(concat_chunks(chunks))
    want = recs[0] + recs[1]
    assert [r["image_id"] for r in back] == [r["image_id"] for r in want]
    for b, w in zip(back, want):
        assert b["saver_ap"] == w["saver_ap"] and torch.equal(b["summary"], w["summary"])
        assert ("base_ap" in b) == with_base
        for src in ("saver", "base"):
            assert (src in b) == (src in w)
            if src in w:
                for k in ("boxes", "scores", "category_ids"):
                    np.testing.assert_array_equal(b[src][k], w[src][k])
    dets = flat_dets(concat_chunks(chunks), "saver")
    assert len(dets) == 8 and dets.chunk(0, 8)[2].scores.tolist() == pytest.approx(
        want[2]["saver"]["scores"].tolist()
    )
    only = read_chunk(str(tmp_path / "c0.npz"), key, ["saver_ap"])
    assert list(only) == ["saver_ap"]
    with pytest.raises(ValueError, match="c0.npz.*another key"):
        read_chunk(str(tmp_path / "c0.npz"), {"format": 2, "views": [1, 3]})


def test_truncated_chunk_is_named(tmp_path):
    path = str(tmp_path / "chunk_00000.npz")
    write_chunk(path, {"k": 1}, records_to_arrays(fake_records(4, True, np.random.default_rng(1))))
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(UnreadableChunk, match="chunk_00000.npz"):
        read_chunk(path, {"k": 1})


# ------------------------------------------------------------------ a real cache, repaired
@pytest.fixture(scope="module")
def dataset(synthetic_split):
    return synthetic_split("calib", 5, "storetest")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(load_config(CONFIG, ["MODEL.DEVICE", "cpu"])).eval()


@pytest.fixture
def cfg(tmp_path):
    return load_config(
        CONFIG,
        [
            *UNTRAINED_ON_CPU,
            "MODEL.TINYSAVER.CACHE.CHUNK_SIZE",
            "2",
            "MODEL.TINYSAVER.CACHE.DIR",
            str(tmp_path / "cache"),
        ],
    )


def test_unreadable_chunk_and_manifest_are_repaired(cfg, model, dataset, caplog):
    cache = OutputCache(cfg, dataset, views=1, with_base=True, model=model)
    first = cache.load_arrays()
    chunk = os.path.join(cache.dir, "chunk_00001.npz")
    data = open(chunk, "rb").read()
    open(chunk, "wb").write(data[:100])  # a killed copy
    manifest = os.path.join(cache.dir, "manifest.json")
    open(manifest, "w").write('{"key": {"format": 2, "datas')  # a broken manifest
    assert not cache_is_complete(cfg, dataset, 1, True)
    with caplog.at_level(logging.WARNING):
        again = OutputCache(cfg, dataset, views=1, with_base=True, model=model).load_arrays()
    text = caplog.text
    assert "chunk_00001.npz" in text and "recomputing" in text and "manifest.json" in text
    assert set(again) == set(first)
    for k in first:
        np.testing.assert_array_equal(again[k], first[k])
    assert cache_is_complete(cfg, dataset, 1, True)  # the manifest was rewritten
    assert json.load(open(manifest))["complete"] is True
    # Streaming and column selection: only what a reader needs.
    cols = list(
        OutputCache(cfg, dataset, views=1, with_base=True, model=model).iter_chunks(
            ["summary", "saver_ap"]
        )
    )
    assert len(cols) == 3 and all(set(c) == {"summary", "saver_ap"} for c in cols)
    dets = flat_dets(again, "base")
    assert len(dets) == 5 and len(dets.scores) == again["base_offsets"][-1]


def test_old_format_cache_is_refused_with_how_to_rebuild(cfg, model, dataset):
    cache = OutputCache(cfg, dataset, views=1, model=model)
    cache.load_arrays()
    manifest = os.path.join(cache.dir, "manifest.json")
    m = json.load(open(manifest))
    m["key"]["format"] = 1
    json.dump(m, open(manifest, "w"))
    with pytest.raises(ValueError, match=r"format 1.*Delete that\s+folder and rebuild"):
        OutputCache(cfg, dataset, views=1, model=model).load_or_build()


def test_training_examples_from_chunks_are_one_array(tmp_path):
    from tinysaver_det.engine.output_cache import examples_from_chunks
    from tinysaver_det.modeling.meta_arch import SUMMARY_KEY, TARGET_KEY

    rng = np.random.default_rng(3)
    key = {"k": 2}
    recs = [fake_records(4, True, rng), fake_records(3, True, rng)]
    paths = [str(tmp_path / f"c{c}.npz") for c in range(2)]
    for p, r in zip(paths, recs):
        write_chunk(p, key, records_to_arrays(r))

    def read(cols):
        return (read_chunk(p, key, cols) for p in paths)

    gain = examples_from_chunks(read, "ap_gain")
    flat = recs[0] + recs[1]
    assert len(gain) == 7 and gain.summary.shape == (7, 5)
    for i, r in enumerate(flat):
        ex = gain[i]
        assert ex[TARGET_KEY] == pytest.approx(r["base_ap"] - r["saver_ap"])
        assert torch.equal(ex[SUMMARY_KEY], r["summary"])
    assert examples_from_chunks(read, "saver_ap")[6][TARGET_KEY] == flat[6]["saver_ap"]
    write_chunk(paths[1], key, records_to_arrays(fake_records(3, False, rng)))  # no base there
    with pytest.raises(ValueError, match="with_base=True"):
        examples_from_chunks(read, "ap_gain")
