"""
Cached detector outputs: the saver (and optionally the base) run once over a dataset, and evaluator
training and calibration read the cache instead of re-running detectors.

Layout of one cache (a folder):
    manifest.json      the cache key (what it was built from) and, once done, "complete": true
    chunk_00000.npz    records of images [0, CHUNK_SIZE) as arrays (cache_store), written atomically
    ...
A chunk is the unit of work: an interrupted build resumes by computing the chunks that are missing.
A folder whose key differs (other weights, configs, dataset, views) is refused, never reused; so is
a cache of an older format. A chunk that cannot be read is recomputed; an unreadable manifest is
rewritten (both with a warning naming the file). A cache with the base takes the saver's records
of a chunk from the saver-only cache of the same dataset and views when that chunk exists for the
same saver: the saver's half can be built while the base still trains.

Design call: the evaluator trains on cached summaries rather than on images with the saver run on
the fly. The saver is frozen, so its outputs for a given view never change; caching them makes an
evaluator step a small MLP step (thousands of steps in seconds) instead of a saver forward pass.
Augmentation (as in the paper) comes from caching several augmented views of each training image.
"""

import hashlib
import json
import logging
import os
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import tqdm

import detectron2.data.transforms as T
from detectron2.modeling import build_model
from detectron2.utils import comm

from ..checkpoint import load_tinysaver_weights
from ..config import cache_root, load_sub_config
from ..data.checks import RobustDatasetMapper, checked_dataset_dicts
from ..evaluation.detections import contiguous_to_dataset_id, detections_record, record_dets
from ..evaluation.ground_truth import dataset_ground_truth
from ..evaluation.quality import marginal_targets, routing_quality
from ..metrics.coco_fast import ImageGT, per_image_ap
from ..metrics.per_image import dets_from_predictions, gt_from_instances
from ..modeling.routing import base_gain, confidence_score
from ..utils.atomic import atomic_save_json
from ..utils.rng import numpy_global_seed
from .cache_store import (
    SOURCES,
    UnreadableChunk,
    arrays_to_records,
    concat_chunks,
    flat_dets,
    read_chunk,
    records_to_arrays,
    write_chunk,
)

logger = logging.getLogger(__name__)

CACHE_FORMAT = 2  # 2: one .npz of contiguous arrays per chunk (cache_store); 1: pickled dicts


def state_fingerprint(module: torch.nn.Module) -> str:
    """A hash of a module's weights: caches are keyed by what the detectors are, not file names."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def config_fingerprint(cfg) -> str:
    """
    A hash of what a detector's config decides about its outputs. Of MODEL.TINYSAVER (added to
    every config loaded here) only REGNET shapes a detector (the registered RegNet backbone): the
    other keys are left out, so that a new or changed TinySaver setting does not invalidate caches.
    """
    cfg = cfg.clone()
    cfg.defrost()
    regnet = cfg.MODEL.TINYSAVER.REGNET
    cfg.MODEL.TINYSAVER = type(cfg)({"REGNET": regnet})
    return hashlib.sha256(cfg.dump().encode()).hexdigest()[:16]


def cache_key(model, cfg, dataset_name: str, num_images: int, views: int, with_base: bool) -> Dict:
    """Everything that decides a cache's content. Two caches with equal keys are interchangeable."""
    ev = model.evaluator
    min_test = cfg.INPUT.MIN_SIZE_TEST
    min_test = min_test if isinstance(min_test, (list, tuple)) else [min_test]
    return {
        "format": CACHE_FORMAT,
        "dataset": dataset_name,
        "num_images": num_images,
        "views": views,
        "with_base": with_base,
        "saver_weights": state_fingerprint(model.saver),
        "base_weights": state_fingerprint(model.base) if with_base else None,
        # By content, not path: the same file reached from another working directory is the same.
        "saver_config": config_fingerprint(load_sub_config(cfg, "SAVER")),
        "base_config": config_fingerprint(load_sub_config(cfg, "BASE")) if with_base else None,
        "saver_input_size": list(model.saver_input_size),
        "base_input_size": list(model.base_input_size),
        "input": [
            list(min_test),
            cfg.INPUT.MAX_SIZE_TEST,
            list(cfg.INPUT.MIN_SIZE_TRAIN),
            cfg.INPUT.MAX_SIZE_TRAIN,
            cfg.INPUT.RANDOM_FLIP,
        ],
        "summary": [type(ev).__name__, ev.summary_dim, ev.top_k, list(ev.in_features)],
        "chunk_size": cfg.MODEL.TINYSAVER.CACHE.CHUNK_SIZE,
        # What augmented views are (view_mapper): caches of earlier view augmentations are refused.
        "view_augmentation": VIEW_AUGMENTATION if views > 1 else None,
    }


def cache_dir_for(cfg, dataset_name: str, views: int, with_base: bool) -> str:
    name = f"{dataset_name}_{views}views{'_base' if with_base else ''}"
    return os.path.join(cache_root(cfg), name)


# Names the augmentations of view_mapper in the cache key; change it when they change.
VIEW_AUGMENTATION = "crop0.6-resize-flip-brightness0.7-contrast0.7"


def view_mapper(cfg) -> RobustDatasetMapper:
    """
    The mapper of augmented views (1, 2, ...). The saver resizes every input to its own test size,
    which undoes a scale jitter, so views differ by what survives that resize: a crop (what the
    image holds and how large its objects are), a flip, and brightness and contrast (saturation
    would assume RGB input; detectron2's default is BGR).
    Drawn from numpy's RNG, which the cache seeds per image and view.
    """
    args = RobustDatasetMapper.from_config(cfg, is_train=True)
    args["augmentations"] = [
        T.RandomCrop("relative_range", (0.6, 1.0)),
        *args["augmentations"],  # the config's train resize and flip
        T.RandomBrightness(0.7, 1.3),
        T.RandomContrast(0.7, 1.3),
    ]
    return RobustDatasetMapper(**args)


class OutputCache:
    """
    Build or open the cache of one dataset for one TinySaver model.

    Args:
        cfg: the TinySaver config (sub-model weights are read from it).
        dataset_name: a registered dataset.
        views: images per dataset image: view 0 is the plain test-time image; views 1.. are training
            augmentations (view_mapper), drawn with a fixed seed per image and view.
        with_base: also run the base and store its detections and per-image AP.
    """

    def __init__(self, cfg, dataset_name: str, views: int = 1, with_base: bool = False, model=None):
        self.cfg = cfg
        self.dataset_name = dataset_name
        self.views = views
        self.with_base = with_base
        self.dir = cache_dir_for(cfg, dataset_name, views, with_base)
        self.chunk_size = cfg.MODEL.TINYSAVER.CACHE.CHUNK_SIZE
        self._model = model
        self._to_dataset_id = None  # known once the dataset is loaded (load_or_build)
        self._test_mapper = RobustDatasetMapper(cfg, is_train=False)
        self._train_mapper = view_mapper(cfg) if views > 1 else None

    # --- building ---------------------------------------------------------------------------------
    def model(self):
        if self._model is None:
            model = build_model(self.cfg)
            # A saver-only cache needs no base weights (which may be a model-zoo download).
            parts = ("SAVER", "BASE") if self.with_base else ("SAVER",)
            load_tinysaver_weights(model, self.cfg, parts=parts)
            self._model = model.eval()
        return self._model

    def load_or_build(self) -> List[dict]:
        """All records (one per image and view, in dataset order), building what is missing."""
        return arrays_to_records(self.load_arrays())

    def load_arrays(self, columns: Optional[List[str]] = None) -> Dict[str, np.ndarray]:
        """
        The cache as contiguous arrays (cache_store's columns; all, or only `columns`), building
        what is missing. Evaluator training needs only summaries and targets, calibration the
        detections (cache_store.flat_dets): neither builds a Python object per image.
        """
        return concat_chunks(list(self.iter_chunks(columns)))

    def iter_chunks(self, columns: Optional[List[str]] = None) -> Iterator[Dict[str, np.ndarray]]:
        """The chunks' arrays one at a time (streaming), building missing or unreadable chunks."""
        dataset_dicts = checked_dataset_dicts(
            [self.dataset_name], self.cfg.MODEL.TINYSAVER.DATA.SKIP_BAD_IMAGES
        )
        self._to_dataset_id = contiguous_to_dataset_id(self.dataset_name)
        model = self.model()
        key = cache_key(
            model, self.cfg, self.dataset_name, len(dataset_dicts), self.views, self.with_base
        )
        self._check_or_write_manifest(key)
        num_chunks = (len(dataset_dicts) + self.chunk_size - 1) // self.chunk_size
        todo = [c for c in range(num_chunks) if not os.path.isfile(self._chunk_path(c))]
        mine = [c for i, c in enumerate(todo) if i % comm.get_world_size() == comm.get_rank()]
        if todo:
            logger.info(
                f"Caching outputs of {self.dataset_name}: {len(todo)} of {num_chunks} chunks to "
                f"compute ({len(mine)} on this process) into {self.dir}"
            )
        gts = []
        if mine:
            gts = dataset_ground_truth(self.dataset_name, dataset_dicts)
            sizes = {
                c: min(self.chunk_size, len(dataset_dicts) - c * self.chunk_size) for c in mine
            }
            bar = tqdm.tqdm(
                total=sum(sizes.values()),
                desc=f"cache {self.dataset_name}",
                unit="img",
                disable=not comm.is_main_process(),
            )
            for c in mine:
                self._build_chunk(c, model, dataset_dicts, gts, key)
                bar.update(sizes[c])
            bar.close()
        comm.synchronize()
        if comm.is_main_process():
            atomic_save_json(
                {
                    "key": key,
                    "complete": True,
                    "num_chunks": num_chunks,
                    "num_records": len(dataset_dicts) * self.views,
                },
                self._manifest_path(),
            )
        for c in range(num_chunks):
            try:
                yield read_chunk(self._chunk_path(c), key, columns)
            except UnreadableChunk as e:
                # A truncated or corrupted file (killed copy, full disk): repair, do not crash.
                logger.warning(f"{e}; recomputing that chunk")
                os.remove(self._chunk_path(c))
                gts = gts or dataset_ground_truth(self.dataset_name, dataset_dicts)
                self._build_chunk(c, model, dataset_dicts, gts, key)
                yield read_chunk(self._chunk_path(c), key, columns)

    def _build_chunk(
        self, c: int, model, dataset_dicts: List[dict], gts: List[ImageGT], key: Dict
    ) -> None:
        lo, hi = c * self.chunk_size, min(len(dataset_dicts), (c + 1) * self.chunk_size)
        saver_records = self._saver_only_records(c, key) if self.with_base else None
        records = []
        for i in range(lo, hi):
            done = None
            if saver_records is not None:
                done = saver_records[(i - lo) * self.views : (i - lo + 1) * self.views]
            records += self._image_records(model, dataset_dicts[i], gts[i], i, done)
        write_chunk(self._chunk_path(c), key, records_to_arrays(records))

    def _saver_only_records(self, c: int, key: Dict) -> Optional[List[dict]]:
        """
        The saver's records of chunk `c` from the saver-only cache of the same dataset and views,
        if that chunk exists and was built by the same saver: a cache with the base then runs only
        the base. This is how the saver's half is built while the base still trains (tools/demo.py).
        """
        saver_key = dict(key, with_base=False, base_weights=None, base_config=None)
        path = os.path.join(
            cache_dir_for(self.cfg, self.dataset_name, self.views, False), f"chunk_{c:05d}.npz"
        )
        if not os.path.isfile(path):
            return None
        try:
            return arrays_to_records(read_chunk(path, saver_key))
        except (UnreadableChunk, ValueError) as e:  # another saver, or a broken file: recompute
            logger.info(f"Not reusing the saver's outputs in {path}: {e}")
            return None

    def _check_or_write_manifest(self, key: Dict) -> None:
        path = self._manifest_path()
        manifest = _read_manifest(path) if os.path.isfile(path) else None
        if manifest is not None:
            old = manifest["key"]
            if old.get("format") != CACHE_FORMAT:
                raise ValueError(
                    f"The cache in {self.dir} has format {old.get('format')!r} (written by an "
                    f"older tinysaver_det); this version reads format {CACHE_FORMAT}. Delete that "
                    f"folder and rebuild it: tools/cache_outputs.py, or any run that reads the "
                    f"cache, rebuilds it."
                )
            if old != key:
                diff = sorted(k for k in set(old) | set(key) if old.get(k) != key.get(k))
                raise ValueError(
                    f"The cache in {self.dir} was built from another {', '.join(diff)} and is "
                    "refused, not reused. Delete that folder or set MODEL.TINYSAVER.CACHE.DIR to "
                    "another one."
                )
        elif comm.is_main_process():
            # No manifest, or an unreadable one: each chunk carries its own key, so rewriting the
            # manifest is safe (a chunk of another build is still refused when read).
            os.makedirs(self.dir, exist_ok=True)
            atomic_save_json({"key": key, "complete": False}, path)
        comm.synchronize()

    def _manifest_path(self) -> str:
        return os.path.join(self.dir, "manifest.json")

    def _chunk_path(self, chunk: int) -> str:
        return os.path.join(self.dir, f"chunk_{chunk:05d}.npz")

    def _mapped(self, dataset_dict: dict, index: int, view: int) -> dict:
        """
        View 0 through the test mapper, views 1.. through the training augmentations, the same on
        every build. detectron2's augmentations draw from np.random (even the test resize's choice
        of its one size): seeded per image and view, and the global state restored afterwards.
        """
        mapper = self._test_mapper if view == 0 else self._train_mapper
        with numpy_global_seed((index * 1009 + view) % 2**32):
            return mapper(dict(dataset_dict))

    def _image_records(
        self,
        model,
        dataset_dict: dict,
        gt: ImageGT,
        index: int,
        saver_records: Optional[List[dict]] = None,
    ) -> List[dict]:
        """
        One record per view. `saver_records`: this image's records from a saver-only cache, so
        only the base runs (their views went through the same seeded mapping).
        """
        records = []
        for view in range(self.views):
            inputs = self._mapped(dataset_dict, index, view)
            if view == 0:
                view_gt = gt  # the plain image: outputs in the original frame, the dataset's GT
            else:
                # An augmented view: outputs and GT both in the augmented tensor's frame.
                inputs = {k: v for k, v in inputs.items() if k not in ("height", "width")}
                view_gt = gt_from_instances(inputs["instances"])
            if saver_records is None:
                saver_out, summary = model.run_saver([inputs])
                saver = saver_out[0]["instances"]
                record = {
                    "image_id": dataset_dict.get("image_id", index),
                    "index": index,
                    "view": view,
                    "summary": summary[0].cpu(),
                    "confidence": float(confidence_score(saver)),
                }
                self._add_scored(record, "saver", saver, view_gt, view)
            else:
                record = dict(saver_records[view])
            if self.with_base:
                base = model.run_base([inputs])[0]["instances"]
                self._add_scored(record, "base", base, view_gt, view)
            records.append(record)
        return records

    def _add_scored(self, record: dict, source: str, instances, view_gt: ImageGT, view: int):
        """One detector's per-image AP on a view into `record`, and on the plain view (0, the only
        one whose detections are stored) its detections in dataset ids."""
        if view == 0:
            record[source] = detections_record(instances, self._to_dataset_id)
            record[f"{source}_ap"] = per_image_ap(view_gt, record_dets(record[source]))
        else:
            record[f"{source}_ap"] = per_image_ap(
                view_gt, dets_from_predictions(instances.to("cpu"))
            )


class CachedExamples(torch.utils.data.Dataset):
    """
    Evaluator training examples over contiguous arrays: one (N, D) summary array and one target per
    row, each example made on access. Unlike a list of dicts (which detectron2's loader pickles
    one by one), 236k views of COCO train2017 stay one ~1 GB array.
    """

    def __init__(self, summary: np.ndarray, target: np.ndarray):
        if len(summary) != len(target):
            raise ValueError(f"{len(summary)} summaries but {len(target)} targets")
        self.summary, self.target = summary, np.asarray(target, np.float64)

    def __len__(self) -> int:
        return len(self.target)

    def __getitem__(self, i: int) -> dict:
        from ..modeling.meta_arch import SUMMARY_KEY, TARGET_KEY

        return {
            SUMMARY_KEY: torch.from_numpy(np.array(self.summary[i])),
            TARGET_KEY: float(self.target[i]),
        }


def cached_examples(caches: List["OutputCache"], target: str) -> CachedExamples:
    """Training examples of several caches, read column by column (summaries and targets only)."""
    row_targets = None
    if target == "marginal_ap":
        row_targets = np.concatenate([marginal_rows(c) for c in caches]) if caches else None
    return examples_from_chunks(
        lambda cols: (a for c in caches for a in c.iter_chunks(cols)),
        target,
        row_targets=row_targets,
    )


def marginal_rows(cache: "OutputCache") -> np.ndarray:
    """
    The marginal_ap target of every row of a cache (evaluation/quality.py): computed from the plain
    view's saver and base detections over the whole split; augmented views get their image's value.
    """
    if not cache.with_base:
        raise ValueError("TARGET 'marginal_ap' needs a cache built with the base (with_base=True)")
    columns = ["image_id", "index", "view"] + [
        f"{src}_{c}" for src in SOURCES for c in ("offsets", "boxes", "scores", "category_ids")
    ]
    a = cache.load_arrays(columns)
    dicts = checked_dataset_dicts(
        [cache.dataset_name], cache.cfg.MODEL.TINYSAVER.DATA.SKIP_BAD_IMAGES
    )
    gts = dataset_ground_truth(cache.dataset_name, dicts)
    plain = np.flatnonzero(a["view"] == 0)
    plain = plain[np.argsort(a["image_id"][plain], kind="stable")]  # pycocotools' tie order
    dets = {src: flat_dets(a, src).chunk(0, len(a["view"])) for src in SOURCES}
    marginal = marginal_targets(
        [gts[a["index"][i]] for i in plain],
        [dets["saver"][i] for i in plain],
        [dets["base"][i] for i in plain],
    )
    by_index = np.full(len(dicts), np.nan)
    by_index[a["index"][plain]] = marginal
    return by_index[a["index"]]


def true_quality(cache: "OutputCache", target: str) -> np.ndarray:
    """
    The true routing quality of every row of a cache (higher = exit). Targets that compare the
    detectors (ap_gain, marginal_ap) need a cache built with the base; saver_ap does not.
    """
    a = cache.load_arrays(["saver_ap"] + (["base_ap"] if target == "ap_gain" else []))
    marginal = marginal_rows(cache) if target == "marginal_ap" else None
    return routing_quality(target, a["saver_ap"], a.get("base_ap"), marginal)


def examples_from_chunks(
    read: Callable[[List[str]], Iterator[Dict[str, np.ndarray]]],
    target: str,
    row_targets: Optional[np.ndarray] = None,
) -> CachedExamples:
    """
    CachedExamples from a chunk reader (``read(columns)`` yields each chunk's columns). Two passes:
    targets first (small), then summaries copied chunk by chunk into one preallocated array, so the
    peak is one summary array, not the chunks plus their concatenation. Targets that need the whole
    split (marginal_ap) come precomputed, one per row, as `row_targets`.
    """
    if row_targets is not None:
        value = np.asarray(row_targets, np.float64)
    elif target == "marginal_ap":
        raise ValueError(
            "TARGET 'marginal_ap' is computed over whole splits: pass row_targets "
            "(output_cache.marginal_rows)"
        )
    else:
        cols = ["saver_ap"] + (["base_ap"] if target == "ap_gain" else [])
        targets = concat_chunks(list(read(cols)))
        if not targets:
            return CachedExamples(np.zeros((0, 0), np.float32), np.zeros(0))
        if target == "ap_gain":
            if "base_ap" not in targets or np.isnan(targets["base_ap"]).any():
                raise ValueError(
                    "TARGET 'ap_gain' needs a cache built with the base (with_base=True)"
                )
            value = base_gain(targets["saver_ap"], targets["base_ap"]).numpy()
        else:
            value = targets["saver_ap"]
    if np.isnan(value).any():
        raise ValueError(f"{int(np.isnan(value).sum())} cached rows have no {target} target")
    summary, lo = None, 0
    for a in read(["summary"]):
        if summary is None:
            summary = np.empty((len(value), a["summary"].shape[1]), np.float32)
        summary[lo : lo + len(a["summary"])] = a["summary"]
        lo += len(a["summary"])
    if summary is None:
        summary = np.zeros((0, 0), np.float32)
    if lo != len(value):
        raise ValueError(
            f"The cache changed while it was read: {lo} summaries, {len(value)} targets"
        )
    return CachedExamples(summary, value)


def _read_manifest(path: str) -> Optional[Dict]:
    """A manifest with a "key" dict; None (with a warning naming the file) if it cannot be read."""
    try:
        with open(path) as f:
            manifest = json.load(f)
        key = manifest["key"]
        if not isinstance(key, dict):
            raise TypeError(f"'key' is a {type(key).__name__}")
        return manifest
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.warning(
            f"Cache manifest {path!r} cannot be read ({type(e).__name__}: {e}); "
            "it is rewritten and its chunks are checked one by one"
        )
        return None


def cache_is_complete(cfg, dataset_name: str, views: int, with_base: bool) -> bool:
    """Whether a finished cache is on disk (its key is checked only when it is opened)."""
    path = os.path.join(cache_dir_for(cfg, dataset_name, views, with_base), "manifest.json")
    if not os.path.isfile(path):
        return False
    manifest = _read_manifest(path)
    return bool(manifest and manifest.get("complete", False))


def training_cache_spec(cfg) -> Tuple[int, bool]:
    """
    Views per image, and whether the base runs, in the evaluator's training caches. The ap_gain
    and marginal_ap targets compare the base with the saver, so their caches run both.
    """
    return (
        cfg.MODEL.TINYSAVER.CACHE.TRAIN_VIEWS,
        cfg.MODEL.TINYSAVER.EVALUATOR.TARGET in ("ap_gain", "marginal_ap"),
    )


def build_caches(
    cfg,
    dataset_names: Optional[List[str]] = None,
    views: Optional[int] = None,
    with_base: bool = False,
    model=None,
) -> Dict[str, int]:
    """
    Build (or complete) caches ahead of the runs that read them. With no dataset names: the
    evaluator's training caches (DATASETS.TRAIN, CACHE.TRAIN_VIEWS views), exactly what
    tools/train_net.py would build; for the default saver_ap target they need no base weights.
    `model` defaults to the config's TinySaver model with its weights. Returns records per dataset.
    """
    if cfg.MODEL.META_ARCHITECTURE != "TinySaverRCNN":
        raise ValueError(
            f"Caches are built from a TinySaver config; MODEL.META_ARCHITECTURE is "
            f"{cfg.MODEL.META_ARCHITECTURE!r}"
        )
    if not dataset_names:
        dataset_names = list(cfg.DATASETS.TRAIN)
        train_views, train_with_base = training_cache_spec(cfg)
        views, with_base = views or train_views, with_base or train_with_base
    counts = {}
    for name in dataset_names:
        cache = OutputCache(cfg, name, views=views or 1, with_base=with_base, model=model)
        counts[name] = len(cache.load_or_build())
        model = cache.model()  # one model for every dataset
    return counts
