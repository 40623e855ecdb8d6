"""Threshold sweeps of merged COCO box metrics that grow gently with the number of images.

A sweep point keeps, for every image, the saver's (source 0) or the base's (source 1) detections.
``MatchTable.coco_metrics`` recomputes each point from all rows. Here a router's thresholds are
walked in order of growing exit set: an image moves from the base to the saver exactly once, so a
step flips only the moved images' rows and updates running counts, and a point costs one pass over
the *true-positive* entries that are kept (the precision envelope needs each of them), never a pass
over every detection. Results are bit-identical to ``MatchTable.coco_metrics`` (same float
operations, same sums; ``tests/evaluation/test_coco_sweep.py``).

Layout: per area range a and IoU threshold t, rows are presorted in COCOeval.accumulate's order
(category, score desc, image, source, rank). The *items* of segment (a, t, category) are its true
positives at t plus the rows valid only at some IoU thresholds ("partial"); every other valid row
is valid at all thresholds and is counted through ``fv`` (one running count per query row).
For a kept true positive: k = kept true positives so far, nv = kept valid rows so far, and
precision = k / (nv + eps), exactly as pycocotools (tp / (fp + tp + eps), fp + tp == nv).

``build`` matches images in chunks and keeps only compact arrays, so 118k images with two
sources of 100 detections each fit in well under 3 GB.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Sequence

import numpy as np

from .coco_fast import (A, REC_THRS, T, ImageDets, ImageGT, MatchTable, _flatten_gt, _match,
                        _mean_defined, _metrics_from_precision)
from .flat import category_ids_of, chunk_of

R = len(REC_THRS)
EPS = np.spacing(1)


ALL_T = np.uint16((1 << T) - 1)


def _bits(x: np.ndarray) -> np.ndarray:
    """Bool (N, T[, A]) -> uint16 (N[, A]) with bit t set where x[:, t] is."""
    w = (1 << np.arange(T)).astype(np.uint16)
    w = w if x.ndim == 2 else w[:, None]
    return (x.astype(np.uint16) * w).sum(axis=1, dtype=np.uint16)


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, e) for every pair, vectorised."""
    n = ends - starts
    if not n.sum():
        return np.zeros(0, np.int64)
    offs = np.repeat(starts - np.cumsum(n) + n, n)
    return offs + np.arange(int(n.sum()))


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

    def __init__(self, num_images: int, cat_ids: np.ndarray, npig: np.ndarray,
                 rows: Iterable[tuple]):
        """``rows`` yields, per area range a, ``(img, src, cat, tp_bits, valid_bits)`` in
        accumulate order, rows invalid at every threshold already dropped (as in MatchTable);
        bit t of ``tp_bits`` / ``valid_bits`` (uint16) is IoU threshold t. A generator keeps
        only one area's rows in memory."""
        self.num_images = num_images
        self.cat_ids = np.asarray(cat_ids)
        self.npig = np.asarray(npig, np.int64)            # (ncat, A)
        ncat = len(self.cat_ids)
        self.num_segs = A * T * ncat
        items = dict(seg=[], tp=[], part=[], qr=[], img=[], src=[])
        fv = dict(qs=[], qe=[], img=[], src=[])
        q_off = 0
        for a, (img, src, cat, tp, valid) in enumerate(rows):
            part = valid != ALL_T
            qrows = np.flatnonzero((tp != 0) | part)              # query rows of area a
            q_of_row = np.full(len(img), -1, np.int32)
            q_of_row[qrows] = np.arange(len(qrows)) + q_off
            for t in range(T):
                tp_t = (tp >> t) & 1 != 0
                sel = np.flatnonzero(tp_t | (part & ((valid >> t) & 1 != 0)))
                items["seg"].append(((a * T + t) * ncat + cat[sel]).astype(np.int32))
                items["tp"].append(tp_t[sel])
                items["part"].append(part[sel])
                items["qr"].append(q_of_row[sel])
                items["img"].append(img[sel].astype(np.int32))
                items["src"].append(src[sel].astype(np.int8))
                del tp_t, sel
            # A fully valid row counts for the query rows at or after it in its category.
            rows_f = np.flatnonzero(~part)
            qcat = cat[qrows]
            qs = np.searchsorted(qrows, rows_f).astype(np.int32)
            qe = np.searchsorted(qcat, cat[rows_f], side="right").astype(np.int32)
            live = qs < qe
            fv["qs"].append(qs[live] + q_off)
            fv["qe"].append(qe[live] + q_off)
            rows_f = rows_f[live]
            fv["img"].append(img[rows_f].astype(np.int32))
            fv["src"].append(src[rows_f].astype(np.int8))
            q_off += len(qrows)
            del img, src, cat, tp, valid, part, qrows, q_of_row, rows_f, qcat, qs, qe, live
        def cat_(parts, dt):   # concatenate one field and free its parts
            out = np.concatenate(parts).astype(dt, copy=False) if parts else np.zeros(0, dt)
            parts.clear()
            return out
        self.item_seg = cat_(items["seg"], np.int32)
        self.item_tp = cat_(items["tp"], bool)
        self.item_part = cat_(items["part"], bool)
        self.item_qr = cat_(items["qr"], np.int32)
        self.item_base = cat_(items["src"], np.int8) == 1
        self.num_q = q_off
        self.seg_start = np.searchsorted(self.item_seg, np.arange(self.num_segs + 1))
        del items["seg"], items["tp"], items["part"], items["qr"], items["src"]
        self.item_order, self.item_off = _group(cat_(items["img"], np.int32), num_images)
        del items
        fv_src = cat_(fv["src"], np.int8)
        # Stored grouped by image: a moved image's entries are one contiguous range.
        order, self.fv_off = _group(cat_(fv.pop("img"), np.int32), num_images)
        self.fv_qs = cat_(fv.pop("qs"), np.int32)[order]
        self.fv_qe = cat_(fv.pop("qe"), np.int32)[order]
        fv_src = fv_src[order]
        del fv, order
        self.fv_w = np.where(fv_src == 0, 1, -1).astype(np.int8)    # +1 enters when moving to 0
        base = fv_src == 1
        self._fv_all_base = self._fv_delta(self.fv_qs[base], self.fv_qe[base],
                                           np.ones(int(base.sum()), np.int32))
        # Recall bucket of k true positives, per (category, area): same float ops as accumulate.
        npig = self.npig.T.reshape(-1)                                # index a * ncat + cat
        self.lut_off = np.r_[0, np.cumsum(npig + 1)].astype(np.int64)
        k = np.arange(int(self.lut_off[-1])) - np.repeat(self.lut_off[:-1], npig + 1)
        with np.errstate(invalid="ignore"):   # categories without ground truth: never looked up
            rc = k / np.repeat(npig, npig + 1).astype(np.float64)
        self.lut = (np.searchsorted(REC_THRS, rc, side="right") - 1).astype(np.int16)
        segs = np.arange(self.num_segs)
        self.seg_lut = self.lut_off[(segs // (T * ncat)) * ncat + segs % ncat]

    # ------------------------------------------------------------------------------ builders
    @classmethod
    def from_match_table(cls, table: MatchTable) -> "SweepTable":
        """Reuse a MatchTable whose sources are (saver, base), in that order."""
        if len(table.sources) != 2:
            raise ValueError(f"A sweep needs two sources (saver, base); got {table.sources}")
        rows = ((table.rows_img[a], table.rows_src[a], table.rows_cat[a], _bits(table.rows_tp[a]),
                 _bits(table.rows_valid[a])) for a in range(A))
        return cls(table.num_images, table.cat_ids, table.npig, rows)

    @classmethod
    def build(cls, gts: Sequence[ImageGT], saver: Sequence[ImageDets], base: Sequence[ImageDets],
              max_dets: int = 100, chunk: int = 4096) -> "SweepTable":
        """Match saver and base against ``gts`` (ascending image-id order) in image chunks.
        Each may be a sequence of images or a flat container (``evaluation.flat``)."""
        if not len(saver) == len(base) == len(gts):
            raise ValueError(f"saver/base/gts lengths differ: "
                             f"{len(saver)}, {len(base)}, {len(gts)}")
        chunks = ((chunk_of(gts, lo, lo + chunk), chunk_of(saver, lo, lo + chunk),
                   chunk_of(base, lo, lo + chunk)) for lo in range(0, len(gts), chunk))
        return cls.build_streaming(chunks, category_ids_of(gts, saver, base), max_dets)

    @classmethod
    def build_streaming(cls, chunks: Iterable[tuple], cat_ids: Sequence[int],
                        max_dets: int = 100) -> "SweepTable":
        """Build from consecutive image chunks ``(gts, saver, base)`` (lists of ImageGT /
        ImageDets), e.g. read one cache chunk at a time: only compact columns are kept.
        ``cat_ids``: every category id that occurs (the dataset's)."""
        cat_ids = np.unique(np.asarray(cat_ids, np.int64))
        npig = np.zeros((len(cat_ids), A), np.int64)
        cols = dict(img=[], src=[], cat=[], score=[], rank=[],
                    **{f"{x}{a}": [] for x in ("tp", "valid") for a in range(A)})
        lo = 0
        for gts, saver, base in chunks:
            if not len(saver) == len(base) == len(gts):
                raise ValueError(f"chunk at image {lo}: saver/base/gts lengths differ: "
                                 f"{len(saver)}, {len(base)}, {len(gts)}")
            fg = _flatten_gt(gts, cat_ids)
            np.add.at(npig, fg.cat, fg.notig.astype(np.int64))
            for s, dets in enumerate((saver, base)):
                m = _match(fg, dets, cat_ids, max_dets)
                cols["img"].append((m.img + lo).astype(np.int32))
                cols["src"].append(np.full(len(m.img), s, np.int8))
                cols["cat"].append(m.cat.astype(np.int16 if len(cat_ids) < 2 ** 15 else np.int32))
                cols["score"].append(m.score)
                cols["rank"].append(m.rank.astype(np.int32))
                tp, valid = _bits(m.tp), _bits(~m.ig)
                for a in range(A):   # one column per area, each freed once its area is done
                    cols[f"tp{a}"].append(tp[:, a].copy())
                    cols[f"valid{a}"].append(valid[:, a].copy())
                del m, tp, valid
            lo += len(gts)
        col = {}
        for k in list(cols):
            col[k] = np.concatenate(cols.pop(k)) if cols[k] else np.zeros(0, np.uint16)
        o = np.lexsort((col.pop("rank"), col["src"], col["img"], -col.pop("score"), col["cat"]))
        col["o"] = o.astype(np.int32) if len(o) < 2 ** 31 else o
        del o

        def rows():  # one area at a time, then the columns are freed
            for a in range(A):
                o = col["o"]
                tp, valid = col.pop(f"tp{a}"), col.pop(f"valid{a}")
                sel = o[valid[o] != 0]
                yield col["img"][sel], col["src"][sel], col["cat"][sel], tp[sel], valid[sel]
                del tp, valid, sel
            col.clear()
        return cls(lo, cat_ids, npig, rows())

    # ------------------------------------------------------------------------------ evaluation
    def _fv_delta(self, qs, qe, w) -> np.ndarray:
        d = np.zeros(self.num_q + 1, np.int32)
        np.add.at(d, qs, w)
        np.subtract.at(d, qe, w)
        return np.cumsum(d[:self.num_q], dtype=np.int32)

    def _precision(self, kept: np.ndarray, fv: np.ndarray, areas: int = A) -> np.ndarray:
        """COCOeval precision (T, 101, K, areas) of the kept items (the first ``areas`` ranges).
        One area range at a time, so the temporaries are a quarter of the kept items."""
        ncat = len(self.cat_ids)
        per_area = T * ncat                                           # segments are area-major
        q = np.zeros((areas, per_area * R))
        for a in range(areas):
            s0 = a * per_area
            lo, hi = self.seg_start[s0], self.seg_start[s0 + per_area]
            idx = np.flatnonzero(kept[lo:hi]) + lo
            tpf = self.item_tp[idx]
            ctp = np.cumsum(tpf, dtype=np.int32)
            cpt = np.cumsum(self.item_part[idx], dtype=np.int32)
            before = np.searchsorted(idx, self.seg_start[s0:s0 + per_area]) - 1  # last kept before
            base_tp = np.where(before >= 0, ctp[np.maximum(before, 0)], 0) if len(idx) else before * 0
            base_pt = np.where(before >= 0, cpt[np.maximum(before, 0)], 0) if len(idx) else before * 0
            j = np.flatnonzero(tpf)
            del tpf
            ii = idx[j]
            del idx
            seg = self.item_seg[ii] - s0
            k = ctp[j] - base_tp[seg]
            nv = self.item_qr[ii]
            del ii
            nv = fv[nv] + cpt[j] - base_pt[seg]
            del ctp, cpt, j
            pr = k / (nv + EPS)
            del nv
            flat = seg.astype(np.int64) * R + self.lut[self.seg_lut[seg + s0] + k]
            del seg, k
            if len(flat):
                run = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
                q[a, flat[run]] = np.maximum.reduceat(pr, run)
        q = q.reshape(areas, T, ncat, R)
        q = np.maximum.accumulate(q[..., ::-1], axis=-1)[..., ::-1]   # monotone precision
        q[np.broadcast_to((self.npig.T[:areas] == 0)[:, None, :], (areas, T, ncat))] = -1
        return q.transpose(1, 3, 2, 0)

    def sweep_metrics(self, exit_step: np.ndarray, num_steps: int) -> List[Dict[str, float]]:
        """Metrics of steps 0..num_steps-1; image i takes the saver from step ``exit_step[i]`` on
        (>= num_steps: never). Exit sets grow with the step, so each image moves once."""
        e = np.asarray(exit_step, np.int64).reshape(self.num_images)
        e = np.clip(e, 0, num_steps)
        order, off = _group(e, num_steps + 1)
        kept = self.item_base.copy()
        fv = self._fv_all_base.copy()
        out = []
        for s in range(num_steps):
            moved = order[off[s]:off[s + 1]]
            if len(moved):
                it = self.item_order[_ranges(self.item_off[moved], self.item_off[moved + 1])]
                kept[it] ^= True
                f = _ranges(self.fv_off[moved], self.fv_off[moved + 1])
                fv += self._fv_delta(self.fv_qs[f], self.fv_qe[f], self.fv_w[f].astype(np.int32))
            out.append(_metrics_from_precision(self._precision(kept, fv)))
        return out

    def marginal_ap(self, images: Sequence[int] = None) -> np.ndarray:
        """Dataset AP (x100, COCO 'AP') with only image i's detections swapped from the base's to
        the saver's, minus the base's AP, for each image (default all): the "marginal_ap" quality
        target. Exact (tested against pycocotools). Cost: one pass over the area-'all' items per
        image, i.e. O(images x items): quadratic, fine for calibration-size splits (seconds at
        1k images), not yet for 118k (a near-linear version needs shifted-ratio range maxima)."""
        images = np.arange(self.num_images) if images is None else np.asarray(images, np.int64)
        kept = self.item_base.copy()
        fv = self._fv_all_base.copy()
        ap = lambda: 100 * _mean_defined(self._precision(kept, fv, areas=1)[:, :, :, 0])
        base = ap()
        out = np.empty(len(images))
        for n, i in enumerate(images):
            one = np.array([i])
            it = self.item_order[_ranges(self.item_off[one], self.item_off[one + 1])]
            f = _ranges(self.fv_off[one], self.fv_off[one + 1])
            delta = self._fv_delta(self.fv_qs[f], self.fv_qe[f], self.fv_w[f].astype(np.int32))
            kept[it] ^= True
            fv += delta
            out[n] = ap() - base
            kept[it] ^= True
            fv -= delta
        return out

    def source_metrics(self, source: str) -> Dict[str, float]:
        """Metrics of the saver or the base alone."""
        if source not in ("saver", "base"):
            raise ValueError(f"source must be 'saver' or 'base', got {source!r}")
        return self.coco_metrics(np.full(self.num_images, 0 if source == "saver" else 1))

    def coco_metrics(self, choice) -> Dict[str, float]:
        """Metrics of one choice (0 = saver, 1 = base for each image)."""
        choice = np.asarray(choice, np.int64).reshape(self.num_images)
        return self.sweep_metrics(np.where(choice == 0, 0, 1), 1)[0]


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
    first = np.searchsorted(-desc, -s, side="left")   # first j with desc[j] <= s
    return np.where(finite, first, len(thr)), order
