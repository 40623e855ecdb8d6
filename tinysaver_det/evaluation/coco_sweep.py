"""Threshold sweeps of merged COCO box metrics that grow gently with the number of images.

A sweep point keeps, for every image, the saver's (source 0) or the base's (source 1) detections.
``MatchTable.coco_metrics`` recomputes each point from all rows. Here a router's thresholds are
walked in order of growing exit set: an image moves from the base to the saver exactly once, so a
step flips only the moved images' rows and updates running counts (per item, per block of items
and ``fv``). A point then evaluates exactly only the blocks of items whose count bounds allow
them to hold a precision maximum (``SweepTable._precision``), not every kept true positive.
Results are bit-identical to ``MatchTable.coco_metrics`` (same float operations on the same
integers; ``tests/evaluation/test_coco_sweep.py``, also against pycocotools).

Layout: per area range a and IoU threshold t, rows are presorted in COCOeval.accumulate's order
(category, score desc, image, source, rank). The *items* of segment (a, t, category) are its true
positives at t plus the rows valid only at some IoU thresholds ("partial"); every other valid row
is valid at all thresholds and is counted through ``fv`` (one running count per query row).
For a kept true positive: k = kept true positives so far, nv = kept valid rows so far, and
precision = k / (nv + eps), exactly as pycocotools (tp / (fp + tp + eps), fp + tp == nv).
Segments are cut into nested blocks of ``SweepTable.LEVELS`` items.

Compiled loops (numba; ``sweep_kernels``, ``metrics.match_kernel``): the step (flip the moved
images' items, update block counts and ``fv``), the pruned evaluation, and the build's matching,
accumulate-order sort, grouping and item extraction. In numpy these were scattered updates and
per-level temporaries: 0.31 s a point and 65 s of build at 118k synthetic images (2-core CPU,
bench/cost_growth.py), now ~0.12 s and ~22 s, and ~0.075 s and ~20 s in two threads
(``SweepTable.THREADS``: disjoint groups of area ranges, and saver and base matched side by
side). ``SweepTable.COMPILED = False`` (or no numba) runs the numpy reference of each, which the
tests compare with the compiled one bit for bit.

``build`` matches images in chunks and keeps only compact arrays (118k images with two sources
of 100 detections each: about 1 GB of table, 2.7 GB peak with the imports; bench/cost_growth).
"""

from __future__ import annotations

import ctypes
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterable, List, Sequence

import numpy as np

from ..metrics.coco_fast import (
    REC_THRS,
    A,
    ImageDets,
    ImageGT,
    MatchTable,
    T,
    _flatten_gt,
    _match,
    _mean_defined,
    _metrics_from_precision,
    _pack_bits,
    compiled_module,
)
from .coco_marginal import MarginalIndex
from .flat import category_ids_of, chunk_of


def _kernels():
    """The compiled loops of the sweep (coco_fast.compiled_module): None without numba."""
    return compiled_module("tinysaver_det.evaluation.sweep_kernels")


R = len(REC_THRS)
_SLICE = 1 << 22  # rows per slice of the table's fully-valid pass
EPS = np.spacing(1)


ALL_T = np.uint16((1 << T) - 1)


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, e) for every pair, vectorised."""
    n = ends - starts
    if not n.sum():
        return np.zeros(0, np.int64)
    offs = np.repeat(starts - np.cumsum(n) + n, n)
    return offs + np.arange(int(n.sum()))


_POOL = (None, None)  # (pid, ThreadPoolExecutor): a forked child makes its own


def _run_parallel(calls: list) -> list:
    """The results of the calls (functions without arguments), run in threads, the first one
    here; the compiled kernels release the GIL, so two calls on disjoint data use two cores."""
    global _POOL
    if len(calls) == 1:
        return [calls[0]()]
    pid, pool = _POOL
    if pid != os.getpid():  # a pool's threads do not survive a fork
        pool = ThreadPoolExecutor(max_workers=len(calls) - 1, thread_name_prefix="sweep")
        _POOL = (os.getpid(), pool)
    futures = [pool.submit(c) for c in calls[1:]]
    return [calls[0]()] + [f.result() for f in futures]


def _release_free_memory() -> None:
    """Hand freed heap memory back to the system (glibc's malloc_trim; elsewhere a no-op).
    Matching chunk by chunk leaves hundreds of MB of freed, fragmented heap at 118k images,
    which would otherwise stay in the process's RSS through the rest of the build."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _group_parts(
    key_parts: list,
    num: int,
    value_parts: Sequence[list] = (),
    index: bool = False,
    compiled: bool = True,
):
    """Stable grouping by key (0..num-1) of columns given in parts, one part at a time (parts are
    freed as used): ``(offsets, grouped)``, where rows of key i are ``offsets[i]:offsets[i+1]``
    of every grouped column (each of ``value_parts``, then the rows' original index if
    ``index``). A counting sort: no full-length argsort or permutation (compiled: no sort at
    all)."""
    counts = np.zeros(num, np.int64)
    for k in key_parts:
        counts += np.bincount(k, minlength=num)
    offsets = np.r_[0, np.cumsum(counts)]
    nxt = offsets[:-1].copy()
    n = int(offsets[-1])
    outs = [np.empty(n, v[0].dtype if v else np.int32) for v in value_parts]
    if index:
        outs.append(np.empty(n, np.int32 if n < 2**31 else np.int64))
    lo = 0
    for j, k in enumerate(key_parts):
        if compiled and _kernels() is not None:  # one pass, no sort
            pos = _kernels().key_positions(k, nxt)
            for out, v in zip(outs, value_parts):
                out[pos] = v[j]
                v[j] = None
            if index:
                outs[-1][pos] = np.arange(lo, lo + len(k))
        else:
            o = np.argsort(k, kind="stable")
            ks = k[o]
            pos = nxt[ks] + (np.arange(len(ks)) - np.searchsorted(ks, ks, side="left"))
            for out, v in zip(outs, value_parts):
                out[pos] = v[j][o]
                v[j] = None
            if index:
                outs[-1][pos] = o + lo
            nxt += np.bincount(k, minlength=num)
        lo += len(k)
        key_parts[j] = None
    return offsets, outs


def _group(keys: np.ndarray, num: int):
    """(order, offsets): ``order[offsets[i]:offsets[i+1]]`` are the positions with key i."""
    order = np.argsort(keys, kind="stable").astype(np.int32)
    offsets = np.zeros(num + 1, np.int64)
    np.cumsum(np.bincount(keys, minlength=num), out=offsets[1:])
    return order, offsets


class SweepTable:
    """Presorted, compact matches of a saver and a base on the same images (see module doc).

    Build with ``build`` (chunked, from ground truth and detections) or ``from_match_table``.
    ``sweep_metrics(exit_step, num_steps)`` gives the metrics of every step at once;
    ``coco_metrics(choice)`` one choice (0 = saver, 1 = base per image).
    """

    LEVELS = (64, 8)  # items per block at each level of bounds (see _precision)
    # The bounds pay once a recall point spans enough items (measured: at 10k synthetic images,
    # ~36 items per segment and recall point, one full pass is faster; at 118k, ~420, 2x slower).
    PRUNE_ITEMS_PER_POINT = 100
    EXACT_MARGINAL_IMAGES = 2000  # marginal_ap's default: exact up to this many images
    COMPILED = True  # compiled loops (sweep_kernels, match_kernel) when numba is installed
    # Compiled sweeps split the area ranges in two groups of about equal items ('all' against
    # the other three) and step and evaluate them in two threads, and the build matches saver
    # and base in two: a sweep point 1.6x as fast at 118k images on 2 cores (bench/cost_growth).
    # 1: one thread (bootstrap workers, which are processes already).
    THREADS = 2

    def __init__(
        self, num_images: int, cat_ids: np.ndarray, npig: np.ndarray, rows: Iterable[tuple]
    ):
        """``rows`` yields, per area range a, ``(img, src, cat, tp_bits, valid_bits)`` in
        accumulate order, rows invalid at every threshold already dropped (as in MatchTable);
        bit t of ``tp_bits`` / ``valid_bits`` (uint16) is IoU threshold t. A generator keeps
        only one area's rows in memory."""
        self.num_images = num_images
        self.cat_ids = np.asarray(cat_ids)
        self.npig = np.asarray(npig, np.int64)  # (ncat, A)
        ncat = len(self.cat_ids)
        self.num_segs = A * T * ncat
        items = dict(seg=[], tp=[], part=[], qr=[], img=[], src=[])
        seg_dt = np.int16 if self.num_segs < 2**15 else np.int32
        fv = dict(qs=[], w=[], off=[])  # per area, grouped by image (see below)
        q_end = []
        n_fv = 0
        q_off = 0
        area_q = []  # first query row of each area
        for a, (img, src, cat, tp, valid) in enumerate(rows):
            area_q.append(q_off)
            part = valid != ALL_T
            isq = (tp != 0) | part
            qrows = np.flatnonzero(isq)  # query rows of area a
            q_before = np.cumsum(isq, dtype=np.int32) - isq  # query rows before each row
            if self._compiled():  # one compiled pass per threshold
                cols = _kernels().area_items(tp, valid, cat, img, src, q_off, a * T * ncat, ncat, T)
                for k, x in zip(("seg", "tp", "part", "qr", "img", "src"), cols):
                    items[k].append(x.astype(seg_dt) if k == "seg" else x)
                del cols
            else:
                q_of_row = np.full(len(img), -1, np.int32)
                q_of_row[qrows] = np.arange(len(qrows)) + q_off
                for t in range(T):
                    tp_t = (tp >> t) & 1 != 0
                    sel = np.flatnonzero(tp_t | (part & ((valid >> t) & 1 != 0)))
                    items["seg"].append(((a * T + t) * ncat + cat[sel]).astype(seg_dt))
                    items["tp"].append(tp_t[sel])
                    items["part"].append(part[sel])
                    items["qr"].append(q_of_row[sel])
                    items["img"].append(img[sel].astype(np.int32))
                    items["src"].append(src[sel].astype(np.int8))
                    del tp_t, sel
                del q_of_row
            # A fully valid row counts for the query rows at or after it in its category, up to
            # the category's end (q_end). In slices: the temporaries stay a few tens of MB.
            qcat = cat[qrows]
            cat_end = np.searchsorted(qcat, np.arange(ncat), side="right")
            q_end.append((cat_end[qcat] + q_off).astype(np.int32))
            f_qs, f_img, f_w = [], [], []
            for lo in range(0, len(img), _SLICE):
                rows_f = np.flatnonzero(~part[lo : lo + _SLICE]) + lo
                qs = q_before[rows_f]  # the first query row at or after the row
                live = qs < len(qrows)
                live[live] = qcat[qs[live]] == cat[rows_f[live]]
                rows_f = rows_f[live]
                f_qs.append((qs[live] + q_off).astype(np.int32))
                f_img.append(img[rows_f].astype(np.int32))
                f_w.append(np.where(src[rows_f] == 0, 1, -1).astype(np.int8))  # +1: to saver
                del rows_f, qs, live
            # Grouped by image within the area: a moved image's entries are 4 ranges.
            off, (f_qs, f_w) = _group_parts(f_img, num_images, [f_qs, f_w], compiled=self.COMPILED)
            fv["qs"].append(f_qs)
            fv["w"].append(f_w)
            fv["off"].append(off + n_fv)
            n_fv += len(f_qs)
            q_off += len(qrows)
            del img, src, cat, tp, valid, part, isq, q_before, qrows, qcat
            _release_free_memory()

        def cat_(parts, dt):  # concatenate one field and free its parts
            out = np.concatenate(parts).astype(dt, copy=False) if parts else np.zeros(0, dt)
            parts.clear()
            return out

        self.item_seg = cat_(items["seg"], seg_dt)
        self.item_tp = cat_(items["tp"], bool)
        self.item_part = cat_(items["part"], bool)
        self.item_qr = cat_(items["qr"], np.int32)
        self.item_base = cat_(items["src"], np.int8) == 1
        self.num_q = q_off
        self.area_q = np.r_[area_q, [q_off] * (A + 1 - len(area_q))].astype(np.int64)
        self.seg_start = np.searchsorted(self.item_seg, np.arange(self.num_segs + 1))
        del items["seg"], items["tp"], items["part"], items["qr"], items["src"]
        self.item_off, (self.item_order,) = _group_parts(
            items.pop("img"), num_images, index=True, compiled=self.COMPILED
        )
        del items
        self.fv_off = (
            np.stack(fv.pop("off")) if fv["qs"] else np.zeros((0, num_images + 1), np.int64)
        )
        self.fv_qs = cat_(fv.pop("qs"), np.int32)
        self.fv_w = cat_(fv.pop("w"), np.int8)
        del fv
        self.q_end = cat_(q_end, np.int32)  # end of each query row's category
        base = (
            np.flatnonzero(self.fv_w[lo : lo + _SLICE] < 0) + lo
            for lo in range(0, len(self.fv_w), _SLICE)
        )
        self._fv_all_base = self._fv_delta(base, -1)
        # Recall bucket of k true positives, per (category, area): same float ops as accumulate.
        npig = self.npig.T.reshape(-1)  # index a * ncat + cat
        self.lut_off = np.r_[0, np.cumsum(npig + 1)].astype(np.int64)
        k = np.arange(int(self.lut_off[-1])) - np.repeat(self.lut_off[:-1], npig + 1)
        with np.errstate(invalid="ignore"):  # categories without ground truth: never looked up
            rc = k / np.repeat(npig, npig + 1).astype(np.float64)
        self.lut = (np.searchsorted(REC_THRS, rc, side="right") - 1).astype(np.int16)
        segs = np.arange(self.num_segs)
        self.seg_lut = self.lut_off[(segs // (T * ncat)) * ncat + segs % ncat]
        self._init_blocks()

    def _init_blocks(self):
        """Cut every segment into blocks of ``LEVELS[l]`` consecutive items at each level l (each
        block nested in one of the level above); a choice keeps its kept TPs and partials per
        block, which bound the precision of a whole block (see ``_precision``)."""
        sizes = tuple(int(x) for x in self.LEVELS)
        if not sizes or sizes[-1] < 1 or any(a % b for a, b in zip(sizes, sizes[1:])):
            raise ValueError(
                f"SweepTable.LEVELS must be block sizes >= 1, each a multiple of "
                f"the next (blocks nest), got {self.LEVELS}"
            )
        n = np.diff(self.seg_start)
        self.levels = []
        for size in self.LEVELS:
            nblk = -(-n // size)
            seg_blk = np.r_[0, np.cumsum(nblk)].astype(np.int64)
            nb = int(seg_blk[-1])
            seg = np.repeat(np.arange(self.num_segs, dtype=np.int32), nblk)
            start = self.seg_start[:-1][seg] + (np.arange(nb) - seg_blk[:-1][seg]) * size
            start = np.r_[start, self.seg_start[-1]].astype(np.int64)
            self.levels.append(
                dict(
                    seg_blk=seg_blk,
                    seg=seg,
                    start=start,
                    qr0=self.item_qr[start[:-1]],
                    qrl=self.item_qr[start[1:] - 1],
                    lut=self.seg_lut[seg],
                )
            )
        for up, down in zip(self.levels[:-1], self.levels[1:]):
            up["child"] = np.searchsorted(down["start"], up["start"])  # children: [c[b], c[b+1])
            down["parent"] = (
                np.searchsorted(up["start"], down["start"][:-1], side="right") - 1
            ).astype(np.int32)
        del self.item_seg  # seg_start gives it
        # The same layout as flat arrays for the compiled loops (sweep_kernels).
        self._sizes = np.array(self.LEVELS, np.int64)
        self._seg_blk = np.stack([lv["seg_blk"] for lv in self.levels])
        self._blk_off = np.r_[0, np.cumsum([len(lv["seg"]) for lv in self.levels])].astype(np.int64)
        used = np.count_nonzero(n)
        self._prune = len(self.item_tp) >= self.PRUNE_ITEMS_PER_POINT * R * max(used, 1)
        self._blk_base = (
            self._per_level(self.item_base & self.item_tp),
            self._per_level(self.item_base & self.item_part),
        )

    @classmethod
    def _compiled(cls) -> bool:
        """Whether the compiled loops run: ``COMPILED`` and numba installed."""
        return cls.COMPILED and _kernels() is not None

    @classmethod
    def _threads(cls) -> int:
        """Threads for the compiled loops (which release the GIL): ``THREADS``, at most 2."""
        return min(max(int(cls.THREADS), 1), 2) if cls._compiled() else 1

    def _area_groups(self, areas: int = A) -> List[tuple]:
        """Area ranges ``(a0, a1)`` of the first ``areas`` stepped and evaluated by one thread
        each: two of about equal items, or one (one thread or one area)."""
        if self._threads() < 2 or areas < 2:
            return [(0, areas)]
        per = T * len(self.cat_ids)  # segments per area (area-major)
        first = self.seg_start[np.arange(areas + 1) * per]  # first item of each area
        larger = [max(first[c] - first[0], first[areas] - first[c]) for c in range(1, areas)]
        cut = 1 + int(np.argmin(larger))
        return [(0, cut), (cut, areas)]

    def _per_level(self, w: np.ndarray) -> List[np.ndarray]:
        """Per level (coarse to fine), the sum of ``w`` (bool per item) over each block."""
        starts = self.levels[-1]["start"][:-1]
        out = [np.add.reduceat(w, starts, dtype=np.int32) if len(starts) else np.zeros(0, np.int32)]
        for up, down in zip(self.levels[-2::-1], self.levels[:0:-1]):
            out.insert(0, np.bincount(down["parent"], out[0], minlength=len(up["seg"])))
        return [x.astype(np.int32) for x in out]

    # ------------------------------------------------------------------------------ builders
    @classmethod
    def from_match_table(cls, table: MatchTable) -> "SweepTable":
        """Reuse a MatchTable whose sources are (saver, base), in that order."""
        if len(table.sources) != 2:
            raise ValueError(f"A sweep needs two sources (saver, base); got {table.sources}")
        rows = (
            (
                table.rows_img[a],
                table.rows_src[a],
                table.rows_cat[a],
                _pack_bits(table.rows_tp[a]),
                _pack_bits(table.rows_valid[a]),
            )
            for a in range(A)
        )
        return cls(table.num_images, table.cat_ids, table.npig, rows)

    @classmethod
    def build(
        cls,
        gts: Sequence[ImageGT],
        saver: Sequence[ImageDets],
        base: Sequence[ImageDets],
        max_dets: int = 100,
        chunk: int = 4096,
    ) -> "SweepTable":
        """Match saver and base against ``gts`` (ascending image-id order) in image chunks.
        Each may be a sequence of images or a flat container (``evaluation.flat``)."""
        if not len(saver) == len(base) == len(gts):
            raise ValueError(
                f"saver/base/gts lengths differ: {len(saver)}, {len(base)}, {len(gts)}"
            )
        chunks = (
            (
                chunk_of(gts, lo, lo + chunk),
                chunk_of(saver, lo, lo + chunk),
                chunk_of(base, lo, lo + chunk),
            )
            for lo in range(0, len(gts), chunk)
        )
        return cls.build_streaming(chunks, category_ids_of(gts, saver, base), max_dets)

    @classmethod
    def build_streaming(
        cls, chunks: Iterable[tuple], cat_ids: Sequence[int], max_dets: int = 100
    ) -> "SweepTable":
        """Build from consecutive image chunks ``(gts, saver, base)`` (lists of ImageGT /
        ImageDets), e.g. read one cache chunk at a time: only compact columns are kept.
        ``cat_ids``: every category id that occurs (the dataset's)."""
        cat_ids = np.unique(np.asarray(cat_ids, np.int64))
        npig = np.zeros((len(cat_ids), A), np.int64)
        cols = dict(
            img=[],
            src=[],
            cat=[],
            score=[],
            rank=[],
            **{f"tv{a}": [] for a in range(A)},  # per area: tp bits | valid bits << 16
        )
        lo = 0
        for gts, saver, base in chunks:
            if not len(saver) == len(base) == len(gts):
                raise ValueError(
                    f"chunk at image {lo}: saver/base/gts lengths differ: "
                    f"{len(saver)}, {len(base)}, {len(gts)}"
                )
            fg = _flatten_gt(gts, cat_ids)
            np.add.at(npig, fg.cat, fg.notig.astype(np.int64))
            both = [
                lambda d=dets: _match(fg, d, cat_ids, max_dets, compiled=cls.COMPILED, packed=True)
                for dets in (saver, base)
            ]  # in two threads, or one after the other
            matches = _run_parallel(both) if cls._threads() > 1 else [m() for m in both]
            for s, m in enumerate(matches):
                cols["img"].append((m.img + lo).astype(np.int32))
                cols["src"].append(np.full(len(m.img), s, np.int8))
                cols["cat"].append(m.cat.astype(np.int16 if len(cat_ids) < 2**15 else np.int32))
                s32 = m.score.astype(np.float32)  # cached scores are float32: same order
                cols["score"].append(s32 if (s32 == m.score).all() else m.score)
                cols["rank"].append(m.rank.astype(np.int16 if max_dets < 2**15 else np.int32))
                tp, valid = m.tp, ~m.ig & ALL_T
                for a in range(A):  # one column per area, each freed once its area is done
                    cols[f"tv{a}"].append(tp[:, a] | valid[:, a].astype(np.uint32) << 16)
                del m, tp, valid
            del matches, both
            lo += len(gts)
        col = {}
        for k in list(cols):
            empty = np.zeros(0, np.uint32 if k.startswith("tv") else np.uint16)
            col[k] = np.concatenate(cols.pop(k)) if cols[k] else empty
        _release_free_memory()
        score = col.pop("score")
        if cls._compiled() and score.dtype == np.float32 and not np.isnan(score).any():
            col.pop("rank")  # the rows are in rank order within each (image, source, category)
            n = len(score)
            o = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)
            o = _kernels().accumulate_order(
                col["img"], col["src"], col["cat"], score.view(np.uint32), lo, len(cat_ids), o
            )
        else:
            o = np.lexsort((col.pop("rank"), col["src"], col["img"], -score, col["cat"]))
        del score
        o = o.astype(np.int32) if len(o) < 2**31 else o
        for k in ("img", "src", "cat"):  # sorted once; each area then compresses them in order
            col[k] = col[k][o]

        def rows():  # one area at a time, then the columns are freed
            for a in range(A):
                tv = col.pop(f"tv{a}")[o]  # one gather for both
                keep = tv >= 1 << 16  # valid at some threshold
                tv = tv[keep]
                tp, valid = tv.astype(np.uint16), (tv >> 16).astype(np.uint16)
                yield col["img"][keep], col["src"][keep], col["cat"][keep], tp, valid
                del tv, tp, valid, keep
            col.clear()

        return cls(lo, cat_ids, npig, rows())

    # ------------------------------------------------------------------------------ evaluation
    def _fv_delta(self, parts: Iterable[np.ndarray], sign: int) -> np.ndarray:
        """Change of ``fv`` when the fv entries given (index arrays) enter with weight
        ``sign * fv_w`` (sign +1: their images move to the saver)."""
        d = np.zeros(self.num_q + 1, np.int32)
        for f in parts:
            qs = self.fv_qs[f]
            w = self.fv_w[f].astype(np.int32) * sign
            np.add.at(d, qs, w)
            np.subtract.at(d, self.q_end[qs], w)
        return np.cumsum(d[: self.num_q], dtype=np.int32)

    def _precision_full(self, kept: np.ndarray, fv: np.ndarray, areas: int = A) -> np.ndarray:
        """Reference for ``_precision``: one pass over every kept true positive (tests use it).
        One area range at a time, so the temporaries are a quarter of the kept items."""
        ncat = len(self.cat_ids)
        per_area = T * ncat  # segments are area-major
        q = np.zeros((areas, per_area * R))
        for a in range(areas):
            s0 = a * per_area
            lo, hi = self.seg_start[s0], self.seg_start[s0 + per_area]
            idx = np.flatnonzero(kept[lo:hi]) + lo
            tpf = self.item_tp[idx]
            ctp = np.cumsum(tpf, dtype=np.int32)
            cpt = np.cumsum(self.item_part[idx], dtype=np.int32)
            before = (
                np.searchsorted(idx, self.seg_start[s0 : s0 + per_area]) - 1
            )  # last kept before
            zero = before * 0
            base_tp = np.where(before >= 0, ctp[np.maximum(before, 0)], 0) if len(idx) else zero
            base_pt = np.where(before >= 0, cpt[np.maximum(before, 0)], 0) if len(idx) else zero
            j = np.flatnonzero(tpf)
            ii = idx[j]
            cut = np.searchsorted(ii, self.seg_start[s0 : s0 + per_area + 1])
            seg = np.repeat(np.arange(per_area), np.diff(cut))  # ii is sorted
            k = ctp[j] - base_tp[seg]
            nv = fv[self.item_qr[ii]] + cpt[j] - base_pt[seg]
            pr = k / (nv + EPS)
            flat = seg.astype(np.int64) * R + self.lut[self.seg_lut[seg + s0] + k]
            if len(flat):
                run = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
                q[a, flat[run]] = np.maximum.reduceat(pr, run)
        return self._finish(q.reshape(-1), areas)

    def _finish(self, q: np.ndarray, areas: int) -> np.ndarray:
        """Per-(segment, bucket) maxima -> COCOeval precision (T, 101, K, areas)."""
        ncat = len(self.cat_ids)
        q = _envelope(q).reshape(areas, T, ncat, R)  # monotone precision
        q[np.broadcast_to((self.npig.T[:areas] == 0)[:, None, :], (areas, T, ncat))] = -1
        return q.transpose(1, 3, 2, 0)

    def _eval_blocks(
        self,
        kept: np.ndarray,
        fv: np.ndarray,
        sel: np.ndarray,
        k_before: np.ndarray,
        p_before: np.ndarray,
        q: np.ndarray,
    ) -> None:
        """Exact precision of every kept TP in finest blocks ``sel`` (ascending; ``k_before`` /
        ``p_before``: kept TPs / partials of the segment before each): raise
        ``q[segment * R + bucket]`` to the best one per bucket (same float ops as pycocotools)."""
        lv = self.levels[-1]
        lo, hi = lv["start"][sel], lv["start"][sel + 1]
        idx = _ranges(lo, hi)
        owner = np.repeat(np.arange(len(sel)), hi - lo)
        keep = kept[idx]
        idx, owner = idx[keep], owner[keep]
        tp = self.item_tp[idx]
        ctp = np.cumsum(tp, dtype=np.int64)
        cpt = np.cumsum(self.item_part[idx], dtype=np.int64)
        cnt = np.bincount(owner, minlength=len(sel))
        start = np.cumsum(cnt) - cnt  # first kept item of each block
        ctp0, cpt0 = np.r_[0, ctp][start], np.r_[0, cpt][start]
        j = np.flatnonzero(tp)
        o = owner[j]
        k = ctp[j] - ctp0[o] + k_before[o]
        nv = fv[self.item_qr[idx[j]]] + (cpt[j] - cpt0[o] + p_before[o])
        pr = k / (nv + EPS)
        b = sel[o]
        flat = lv["seg"][b].astype(np.int64) * R + self.lut[lv["lut"][b] + k]
        if len(flat):
            run = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
            f = flat[run]
            q[f] = np.maximum(q[f], np.maximum.reduceat(pr, run))

    def _precision(self, st: "_State", areas: int = A) -> np.ndarray:
        """COCOeval precision (T, 101, K, areas) of a choice: the compiled pruned evaluation
        (``sweep_kernels.bucket_maxima``, same bounds as ``_precision_numpy``) where available."""
        if not self._compiled():
            return self._precision_numpy(st, areas)
        lv0, lv1 = max(len(self.levels) - 2, 0), len(self.levels) - 1  # the two finest levels
        per = T * len(self.cat_ids)  # segments per area
        q = np.zeros(areas * per * R)
        _run_parallel([self._bucket_maxima(st, a0 * per, a1 * per, lv0, lv1, q)
                       for a0, a1 in self._area_groups(areas)])  # fmt: skip
        return self._finish(q, areas)

    def _bucket_maxima(self, st: "_State", seg_lo: int, seg_hi: int, lv0: int, lv1: int, q):
        """``sweep_kernels.bucket_maxima`` of segments [seg_lo, seg_hi), to run later."""
        return lambda: _kernels().bucket_maxima(
            seg_lo,
            seg_hi,
            self.seg_start,
            st.flags,
            self.item_qr,
            st.fv,
            self.lut,
            self.seg_lut,
            self.levels[lv0]["seg_blk"],
            st.blk_level(lv0),
            self.levels[lv0]["qrl"],
            self.LEVELS[lv0],
            self.levels[lv1]["seg_blk"],
            st.blk_level(lv1),
            self.levels[lv1]["qrl"],
            self.LEVELS[lv1],
            R,
            EPS,
            q,
        )

    def _precision_numpy(self, st: "_State", areas: int = A) -> np.ndarray:
        """COCOeval precision (T, 101, K, areas) of a choice, evaluating only some blocks exactly.

        Per segment, q[r] = max precision of the kept true positives (TPs) with recall bucket
        >= r. A block b with kept TPs ends at bucket bend(b) and, from its counts alone, bounds
        their precision: with k TPs and v valid rows before it and t TPs in it, its j-th TP has
        precision <= (k + j) / (v + j) <= U(b) = (k + t) / (v + t) (TPs are valid rows; k <= v),
        and its last TP has precision >= L(b) = (k + t) / (valid rows up to its end). So
        qL[r] = max of L(b) over blocks with bend(b) >= r is <= q[r], and a block with
        U(b) < qL[bend(b)] holds no TP that attains any q[r]. Going from coarse to fine levels,
        only the children of the blocks not ruled out are bounded, and only the finest blocks
        left are evaluated, exactly (same float ops as pycocotools). A TP that attains some q[r]
        is never ruled out, so the result is exact. Cost O(coarse blocks + blocks left)."""
        ncat = len(self.cat_ids)
        nseg = areas * T * ncat
        kept = st.kept
        lv = self.levels[0]
        nb = int(lv["seg_blk"][nseg])
        cand = np.arange(nb)
        ktp, kpt = st.blk_tp[0][:nb], st.blk_pt[0][:nb]

        def before(c):  # kept count of the segment before each coarse block
            cs = np.cumsum(c, dtype=np.int64) - c
            return cs - np.r_[cs, 0][lv["seg_blk"][:nseg]][lv["seg"][:nb]]

        k_before, p_before = before(ktp), before(kpt)
        if not self._prune:
            return self._precision_full(kept, st.fv, areas)
        q = np.zeros(nseg * R)  # lower bounds qL
        for level, lv in enumerate(self.levels):
            if level:  # children of the blocks left; counts before them within their parent
                cand, owner, n = _children(self.levels[level - 1]["child"], cand)
                ktp, kpt = st.blk_tp[level][cand], st.blk_pt[level][cand]
                k_before = _seg_excl(ktp, n) + k_before[owner]
                p_before = _seg_excl(kpt, n) + p_before[owner]
            has = np.flatnonzero(ktp > 0)
            cand, k_b, p_b, kt = cand[has], k_before[has], p_before[has], ktp[has]
            k_hi = k_b + kt
            flat = lv["seg"][cand].astype(np.int64) * R + self.lut[lv["lut"][cand] + k_hi]
            low = k_hi / (st.fv[lv["qrl"][cand]] + (p_b + kpt[has]) + EPS)
            if len(flat):  # flat is sorted: segments ascend, buckets ascend within one
                run = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
                f = flat[run]
                q[f] = np.maximum(q[f], np.maximum.reduceat(low, run))
            # Valid rows before the block: fv at its first item, less that item if fv counts it.
            first = lv["start"][cand]
            nv_b = st.fv[lv["qr0"][cand]] - (kept[first] & ~self.item_part[first]) + p_b
            up = k_hi / (nv_b + kt + EPS)
            keep = up >= _envelope(q)[flat]
            cand, k_before, p_before = cand[keep], k_b[keep], p_b[keep]
        q[:] = 0
        self._eval_blocks(kept, st.fv, cand, k_before, p_before, q)
        return self._finish(q, areas)

    def sweep_metrics(self, exit_step: np.ndarray, num_steps: int) -> List[Dict[str, float]]:
        """Metrics of steps 0..num_steps-1; image i takes the saver from step ``exit_step[i]`` on
        (>= num_steps: never). Exit sets grow with the step, so each image moves once."""
        e = np.asarray(exit_step, np.int64).reshape(self.num_images)
        e = np.clip(e, 0, num_steps)
        order, off = _group(e, num_steps + 1)
        st = _State(self)
        out = []
        for s in range(num_steps):
            st.swap(order[off[s] : off[s + 1]], to_saver=True)
            out.append(_metrics_from_precision(self._precision(st)))
        return out

    def marginal_ap(self, images: Sequence[int] = None, exact: bool = None) -> np.ndarray:
        """Dataset AP (x100, COCO 'AP') with only image i's detections swapped from the base's to
        the saver's, minus the base's AP, for each image (default all): the "marginal_ap" quality
        target.

        ``exact=True``: one swap, one pruned area-'all' evaluation and one swap back per image;
        tested against pycocotools; quadratic in the images (bench/cost_growth.py, 2-core CPU:
        ~1 ms per image at 1k images, 0.04 s at 118k, ~1.3 h for all). ``exact=False``:
        ``marginal_ap_bound``'s value, near-linear (~1.7 ms per image), never above the exact
        one and below it by at most that method's per-image bound. Default: exact up to
        ``EXACT_MARGINAL_IMAGES`` images, where the approximation's error is not yet small (mean
        error 2.3% of the mean value at 1k synthetic images, 0.6% at 10k, 0.1% at 118k)."""
        if exact is None:
            exact = self.num_images <= self.EXACT_MARGINAL_IMAGES
        if not exact:
            return self.marginal_ap_bound(images)[0]
        images = np.arange(self.num_images) if images is None else np.asarray(images, np.int64)
        st = _State(self)

        def ap():
            return 100 * _mean_defined(self._precision(st, areas=1)[:, :, :, 0])

        base = ap()
        out = np.empty(len(images))
        for n, i in enumerate(images):
            one = np.array([i])
            st.swap(one, to_saver=True)
            out[n] = ap() - base
            st.swap(one, to_saver=False)
        return out

    def marginal_ap_bound(self, images: Sequence[int] = None) -> tuple:
        """(value, bound) per image with value <= exact marginal AP <= value + bound (see
        ``marginal_ap``; method and bound in ``coco_marginal``). Vectorised over chunks of
        images: O(images x area-'all' segments x 101 recall points)."""
        images = np.arange(self.num_images) if images is None else np.asarray(images, np.int64)
        if not len(images):
            return np.zeros(0), np.zeros(0)
        return MarginalIndex(self).marginal(images)

    def source_metrics(self, source: str) -> Dict[str, float]:
        """Metrics of the saver or the base alone."""
        if source not in ("saver", "base"):
            raise ValueError(f"source must be 'saver' or 'base', got {source!r}")
        return self.coco_metrics(np.full(self.num_images, 0 if source == "saver" else 1))

    def coco_metrics(self, choice) -> Dict[str, float]:
        """Metrics of one choice (0 = saver, 1 = base for each image)."""
        choice = np.asarray(choice, np.int64).reshape(self.num_images)
        return self.sweep_metrics(np.where(choice == 0, 0, 1), 1)[0]


class _State:
    """One choice (saver or base per image) as the sweep walks it: kept items, the running
    counts ``fv`` and the kept true positives / partials per block. Starts with all base."""

    def __init__(self, t: SweepTable):
        self.t = t
        # Per item: bit 1 kept, 2 true positive, 4 partial (one byte for the compiled loops).
        self.flags = (
            t.item_base | (t.item_tp.view(np.uint8) << 1) | (t.item_part.view(np.uint8) << 2)
        )
        self.fv = t._fv_all_base.copy()
        # Kept TPs (column 0) and partials (1) of every block of every level, one array; per
        # level, views of its columns.
        self._blk = np.stack([np.concatenate(x) for x in t._blk_base], axis=1)
        cut = t._blk_off
        self.blk_tp = [self._blk[a:b, 0] for a, b in zip(cut[:-1], cut[1:])]
        self.blk_pt = [self._blk[a:b, 1] for a, b in zip(cut[:-1], cut[1:])]
        self._scratch = None

    @property
    def kept(self) -> np.ndarray:
        return (self.flags & 1).view(bool)

    def blk_level(self, level: int) -> np.ndarray:
        """(blocks, 2) kept TPs and partials of the blocks of one level."""
        return self._blk[self.t._blk_off[level] : self.t._blk_off[level + 1]]

    def swap(self, images: np.ndarray, to_saver: bool) -> None:
        """Move ``images`` (all currently on the other source) to the saver or the base."""
        if not len(images):
            return
        t = self.t
        if not t._compiled():
            return self.swap_numpy(images, to_saver)
        images = np.asarray(images, np.int64)
        if self._scratch is None:
            self._scratch = np.zeros(t.num_q + 1, np.int32)
        _run_parallel([self._swap(images, to_saver, a0, a1) for a0, a1 in t._area_groups()])

    def _swap(self, images: np.ndarray, to_saver: bool, a0: int, a1: int):
        """The compiled swap of the items and ``fv`` of areas [a0, a1), to run later."""
        t, k = self.t, _kernels()
        first = t.seg_start[np.array([a0, a1]) * T * len(t.cat_ids)]  # the areas' items
        areas_fv = min(a1, len(t.fv_off))  # fv_off has no rows without detections

        def run():
            k.swap_items(
                images,
                t.item_off,
                t.item_order,
                self.flags,
                t.seg_start,
                t._seg_blk,
                t._sizes,
                t._blk_off,
                self._blk,
                first[0],
                first[1],
            )
            k.shift_fv(
                images,
                t.fv_off,
                t.fv_qs,
                t.fv_w,
                t.q_end,
                self.fv,
                1 if to_saver else -1,
                self._scratch,
                a0,
                areas_fv,
                t.area_q[a0],
                t.area_q[a1],
            )

        return run

    def swap_numpy(self, images: np.ndarray, to_saver: bool) -> None:
        """``swap`` in numpy (the reference of the compiled one)."""
        t = self.t
        it = t.item_order[_ranges(t.item_off[images], t.item_off[images + 1])]
        self.flags[it] ^= 1
        sign = np.where(self.flags[it] & 1, 1, -1).astype(np.int32)
        dtp, dpt = sign * t.item_tp[it], sign * t.item_part[it]
        for level in range(len(t.levels) - 1, -1, -1):
            if level == len(t.levels) - 1:  # finest block: from the segment (a short search)
                seg = np.searchsorted(t.seg_start, it, side="right") - 1
                blk = t.levels[-1]["seg_blk"][seg] + (it - t.seg_start[seg]) // t.LEVELS[-1]
            else:
                blk = t.levels[level + 1]["parent"][blk]
            np.add.at(self.blk_tp[level], blk, dtp)
            np.add.at(self.blk_pt[level], blk, dpt)
        f = _ranges(t.fv_off[:, images].ravel(), t.fv_off[:, images + 1].ravel())
        self.fv += t._fv_delta([f], 1 if to_saver else -1)


def _children(child: np.ndarray, blocks: np.ndarray) -> tuple:
    """(children, index of the parent in ``blocks`` per child, children per parent)."""
    lo, hi = child[blocks], child[blocks + 1]
    n = hi - lo
    return _ranges(lo, hi), np.repeat(np.arange(len(blocks)), n), n


def _seg_excl(x: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Exclusive cumulative sum of ``x`` restarting at each group of ``n`` (consecutive) items."""
    cs = np.cumsum(x, dtype=np.int64) - x
    first = np.cumsum(n) - n
    return cs - np.repeat(np.r_[cs, 0][first], n)


def _envelope(q: np.ndarray) -> np.ndarray:
    """Per segment of R buckets: the maximum over buckets >= r (COCOeval's monotone precision)."""
    q = q.reshape(-1, R)
    return np.maximum.accumulate(q[:, ::-1], axis=1)[:, ::-1].reshape(-1)


def as_sweep_table(table) -> SweepTable:
    """A SweepTable for a MatchTable (built once and kept on it) or a SweepTable itself."""
    if isinstance(table, SweepTable):
        return table
    cached = getattr(table, "_sweep_table", None)
    if cached is None:
        cached = SweepTable.from_match_table(table)
        table._sweep_table = cached
    return cached


def exit_steps(scores: np.ndarray, thresholds: Sequence[float]) -> tuple:
    """(exit_step per image, step order): thresholds visited in descending order so exit sets
    grow; an image exits where its finite score >= threshold (as ``routing.exit_mask``)."""
    thr = np.asarray(thresholds, np.float64)
    order = np.argsort(-thr, kind="stable")
    s = np.asarray(scores, np.float64)
    finite = np.isfinite(s)
    # Exits at step j iff score >= thr[order[j]]; thresholds descend, so the first such step.
    desc = thr[order]
    first = np.searchsorted(-desc, -s, side="left")  # first j with desc[j] <= s
    return np.where(finite, first, len(thr)), order
