"""
On-disk format of the output cache (format 2): one ``.npz`` of contiguous arrays per chunk.

Format 1 pickled a list of Python dicts per chunk (``chunk_*.pth``): loading 118k images x 2 views
built ~250k dicts and tensors (GBs). Here a chunk is a few arrays, so readers stream chunks or
concatenate only the columns they need, and detections come out as ``evaluation.flat.FlatDets``:

    key                 the cache key as JSON (a chunk from another build is refused)
    image_id index view (n,) int64, one row per image and view
    saver_ap base_ap    (n,) float64 (base_ap NaN where the base did not run)
    confidence          (n,) float64
    summary             (n, D) float32: the evaluator's input
    saver_offsets       (n+1,) int64; saver_boxes (m,4) float32 XYWH, saver_scores (m,) float32,
    saver_category_ids  (m,) int64 (dataset ids); base_* likewise when the base ran.
                        Only view 0 (the plain image) stores detections; other views have none.

A file that cannot be read (truncated, corrupted) raises ``UnreadableChunk`` naming it; the cache
then deletes and recomputes that chunk.
"""

import json
import zipfile
from typing import Dict, Iterable, List

import numpy as np
import torch

from ..evaluation.flat import FlatDets
from ..utils.atomic import atomic_path

SOURCES = ("saver", "base")


class UnreadableChunk(Exception):
    """A chunk file exists but cannot be read back (truncated or corrupted)."""


def records_to_arrays(records: List[dict]) -> Dict[str, np.ndarray]:
    """Columns of a chunk from the per-image records that OutputCache computes."""
    n = len(records)
    out = {
        "image_id": np.array([r["image_id"] for r in records], np.int64),
        "index": np.array([r["index"] for r in records], np.int64),
        "view": np.array([r["view"] for r in records], np.int64),
        "saver_ap": np.array([r["saver_ap"] for r in records], np.float64),
        "base_ap": np.array([r.get("base_ap", np.nan) for r in records], np.float64),
        "confidence": np.array([r["confidence"] for r in records], np.float64),
        "summary": (
            torch.stack([torch.as_tensor(r["summary"]) for r in records]).float().numpy()
            if n
            else np.zeros((0, 0), np.float32)
        ),
    }
    for src in SOURCES:
        parts = [r.get(src) for r in records]
        if not any(p is not None for p in parts):
            continue
        sizes = [0 if p is None else len(p["scores"]) for p in parts]
        out[f"{src}_offsets"] = np.r_[0, np.cumsum(sizes)].astype(np.int64)
        got = [p for p in parts if p is not None]
        out[f"{src}_boxes"] = np.concatenate(
            [np.asarray(p["boxes"], np.float32).reshape(-1, 4) for p in got]
            + [np.zeros((0, 4), np.float32)]
        )
        out[f"{src}_scores"] = np.concatenate(
            [np.asarray(p["scores"], np.float32).reshape(-1) for p in got]
            + [np.zeros(0, np.float32)]
        )
        out[f"{src}_category_ids"] = np.concatenate(
            [np.asarray(p["category_ids"], np.int64).reshape(-1) for p in got]
            + [np.zeros(0, np.int64)]
        )
    return out


def arrays_to_records(arrays: Dict[str, np.ndarray]) -> List[dict]:
    """The per-image dicts of format 1 (what trainer and calibration read today)."""
    records = []
    for i in range(len(arrays["image_id"])):
        r = {
            "image_id": int(arrays["image_id"][i]),
            "index": int(arrays["index"][i]),
            "view": int(arrays["view"][i]),
            "saver_ap": float(arrays["saver_ap"][i]),
            "confidence": float(arrays["confidence"][i]),
            "summary": torch.from_numpy(np.array(arrays["summary"][i])),
        }
        if not np.isnan(arrays["base_ap"][i]):
            r["base_ap"] = float(arrays["base_ap"][i])
        for src in SOURCES:
            if f"{src}_offsets" in arrays and r["view"] == 0:
                lo, hi = arrays[f"{src}_offsets"][i], arrays[f"{src}_offsets"][i + 1]
                r[src] = {
                    "boxes": arrays[f"{src}_boxes"][lo:hi],
                    "scores": arrays[f"{src}_scores"][lo:hi],
                    "category_ids": arrays[f"{src}_category_ids"][lo:hi],
                }
        records.append(r)
    return records


def write_chunk(path: str, key: Dict, arrays: Dict[str, np.ndarray]) -> None:
    """Atomically: the chunk appears complete under its final name or not at all."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, key=np.array(json.dumps(key, sort_keys=True)), **arrays)


def read_chunk(path: str, key: Dict, columns: Iterable[str] = None) -> Dict[str, np.ndarray]:
    """A chunk's arrays (all, or only ``columns``); refuses a chunk built for another key."""
    try:
        with np.load(path, allow_pickle=False) as z:
            stored = json.loads(str(z["key"]))
            names = (
                [k for k in z.files if k != "key"]
                if columns is None
                else [k for k in columns if k in z.files]
            )
            arrays = {k: z[k] for k in names}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise UnreadableChunk(
            f"Cache chunk {path!r} cannot be read ({type(e).__name__}: {e})"
        ) from e
    if stored != json.loads(json.dumps(key, sort_keys=True)):
        raise ValueError(f"Cache chunk {path!r} was built for another key; delete its folder")
    return arrays


def concat_chunks(chunks: List[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    """Columns of several chunks as one set of arrays (offsets shifted to stay valid)."""
    if not chunks:
        return {}
    out = {}
    for k in chunks[0]:
        if k.endswith("_offsets"):
            parts, shift = [np.zeros(1, np.int64)], 0
            for c in chunks:
                parts.append(c[k][1:] + shift)
                shift += int(c[k][-1])
            out[k] = np.concatenate(parts)
        else:
            out[k] = np.concatenate([c[k] for c in chunks])
    return out


def flat_dets(arrays: Dict[str, np.ndarray], source: str) -> FlatDets:
    """Detections of one source as a FlatDets (rows of views > 0 have none)."""
    if f"{source}_offsets" not in arrays:
        raise KeyError(f"The cache has no {source} detections (built with_base={source != 'base'})")
    return FlatDets(
        arrays[f"{source}_boxes"],
        arrays[f"{source}_scores"],
        arrays[f"{source}_category_ids"],
        arrays[f"{source}_offsets"],
    )
