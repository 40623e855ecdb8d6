"""Marginal AP of every image in near-linear time, with a per-image error bound.

The quantity (``SweepTable.marginal_ap``): dataset AP (x100, COCO 'AP', area 'all') with only
image i's detections swapped from the base's to the saver's, minus the base's AP. COCO matches
per image, so the swap only removes image i's base rows and inserts its saver rows in each
segment (IoU threshold t, category) of the area-'all' order. For an untouched true positive (TP)
with k TPs and nv valid rows up to it (precision k / nv), the swap adds piecewise-constant
offsets (a, b): a = image i's saver TPs before it minus its base TPs before it, b the same for
valid rows. The pieces are cut at image i's rows. The interpolated precision at recall point r
is the maximum new precision over the TPs whose new count k + a reaches kmin(r).

Per (image, segment, r) this module takes, exactly:
  * approx(r): the maximum of the new precision over a subset of those TPs: every saver TP of
    image i, and per piece the first old suffix-maximum point in it (the old precision
    envelope's argmax, shifted by the piece's offsets). It is a real precision, so
    approx(r) <= exact(r).
  * ub(r): the maximum over pieces of max(V, (V nv + a) / (nv + b)) at the piece's first TP
    j0 in the range (V: old suffix maximum of precision, nv: valid rows up to j0), clipped to 1.
    Why it bounds: an old TP j >= j0 of the piece with precision P = k / nv_j <= V gets
    (P nv_j + a) / (nv_j + b), increasing in P, so <= (V x + a) / (x + b) at x = nv_j >= nv0;
    that is V + (a - V b) / (x + b), monotone in x, so <= max(V, its value at nv0). Hence
    exact(r) <= ub(r); ub = V where the piece's offsets are 0.
The returned value uses approx; its error bound per image is
    0 <= exact - approx <= bound = 100 * sum over segments and r of (ub - approx) / (T R K),
with K the categories that have ground truth (a little float slack added). The bound is small
where image i's rows come late in a segment's order (large nv) and loose where they lead it
(few rows above them). Tested against the exact method (``SweepTable.marginal_ap(exact=True)``)
on random cases in tests/evaluation/test_coco_sweep.py.

Measured error (bench/cost_growth.py, synthetic, 30 images per size): mean |exact - approx| is
2.3% of the mean |exact| at 1k images, 0.6% at 10k, 0.1% at 118k; the mean bound is 1.0-1.3x the
mean |exact| (it is first-order in the offsets, the error second-order).

Cost: per chunk of images, a sort of their rows (replicated per IoU threshold) and one array
entry per (image, segment it touches, recall point): O(images x segments x 101), no Python loop
per image. Entries are laid out segment-major, so the gathers from one segment's TP arrays hit
the cache (3x faster at 40k images than image-major). 118k images: 208 s.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from ..metrics.coco_fast import REC_THRS, T

R = len(REC_THRS)
EPS = np.spacing(1)
SLACK = 1e-12  # per (segment, r): float rounding of the bound's terms


def _suffix_max(x: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Maximum of ``x`` over the rest of each group (groups consecutive), by pointer doubling:
    exact, log2(longest group) passes."""
    x = x.copy()
    n, step = len(x), 1
    while step < n:
        same = group[step:] == group[:-step]
        np.maximum(x[:-step], np.where(same, x[step:], x[:-step]), out=x[:-step])
        if not same.any():
            break
        step *= 2
    return x


class MarginalIndex:
    """The base state of a SweepTable's area-'all' segments, kept for ``marginal``."""

    def __init__(self, t):
        """Per-segment loops and image chunks keep the temporaries small (118k images: the
        index is ~0.4 GB beside the table's ~1 GB)."""
        ncat = len(t.cat_ids)
        self.t, self.ncat, self.nseg = t, ncat, T * ncat
        i0 = int(t.seg_start[self.nseg])
        seg_start = t.seg_start[: self.nseg + 1]
        self.it_seg = np.repeat(
            np.arange(self.nseg, dtype=np.int16 if self.nseg < 2**15 else np.int32),
            np.diff(seg_start),
        )
        tp, part, base, qr = t.item_tp, t.item_part, t.item_base, t.item_qr
        # Image and category of each area-'all' query row (every query row is an item there).
        self.nq = int(qr[:i0].max()) + 1 if i0 else 0
        self.q_img = np.full(self.nq, -1, np.int32)
        self.q_cat = np.zeros(self.nq, np.int32)
        for lo in range(0, t.num_images, 8192):
            hi = min(lo + 8192, t.num_images)
            it = t.item_order[t.item_off[lo] : t.item_off[hi]]
            img = np.repeat(np.arange(lo, hi, dtype=np.int32), np.diff(t.item_off[lo : hi + 1]))
            keep = it < i0
            self.q_img[qr[it[keep]]] = img[keep]
        # Per segment: base TPs / partials before each item; the old (all-base) TPs with their
        # counts, suffix maximum of precision V and its first argmax at or after each (nxt).
        self.cbt = np.zeros(i0, np.int32)
        self.cbp = np.zeros(i0, np.int32)
        n_tp = np.bincount(self.it_seg[base[:i0] & tp[:i0]], minlength=self.nseg)
        self.tp_off = np.r_[0, np.cumsum(n_tp)].astype(np.int64)
        n = int(self.tp_off[-1])
        self.tp_key = np.zeros(n, np.int64)
        self.k = np.zeros(n + 1, np.int32)  # + a sentinel, so that any piece's index is valid
        self.nv = np.ones(n + 1, np.int32)
        self.V = np.zeros(n + 1)
        self.nxt = np.full(n + 1, n, np.int32)
        npig = t.npig[:, 0]
        self.lut_lo = t.seg_lut[: self.nseg]
        self.npig = npig[np.arange(self.nseg) % ncat]
        self.kmin = np.zeros((self.nseg, R + 1), np.int64)
        self.qbase = np.zeros((self.nseg, R))
        nq = max(self.nq, 1)
        for s in range(self.nseg):
            a, b = seg_start[s], seg_start[s + 1]
            self.q_cat[qr[a:b]] = s % ncat
            bt, bp = base[a:b] & tp[a:b], base[a:b] & part[a:b]
            self.cbt[a:b] = np.cumsum(bt, dtype=np.int32) - bt
            self.cbp[a:b] = np.cumsum(bp, dtype=np.int32) - bp
            o = np.flatnonzero(bt) + a
            lo, hi = self.tp_off[s], self.tp_off[s + 1]
            self.tp_key[lo:hi] = 2 * (s * nq + qr[o].astype(np.int64))
            self.k[lo:hi] = self.cbt[o] + 1
            self.nv[lo:hi] = t._fv_all_base[qr[o]] + self.cbp[o] + part[o]
            prec = self.k[lo:hi] / (self.nv[lo:hi] + EPS)
            v = np.maximum.accumulate(prec[::-1])[::-1]
            self.V[lo:hi] = v
            at = np.where(prec == v, np.arange(lo, hi), hi)
            self.nxt[lo:hi] = np.minimum.accumulate(at[::-1])[::-1]
            m = int(self.npig[s])
            lut = t.lut[self.lut_lo[s] : self.lut_lo[s] + m + 1]
            self.kmin[s, :R] = np.searchsorted(lut, np.arange(R), side="left") if m else 1 << 40
            self.kmin[s, R] = 1 << 40
            j = np.maximum(self.kmin[s, :R] - 1, 0)
            self.qbase[s] = np.where(
                j < hi - lo, v[np.minimum(j, max(hi - lo - 1, 0))] if hi > lo else 0, 0
            )
        self.defined = self.npig > 0
        # Global index of the first old TP that k new TPs reach (r-th recall point), per (seg, r).
        self.kmin1 = (self.tp_off[:-1, None] + np.minimum(self.kmin[:, :R], 1 << 30) - 1).ravel()
        self.qbase_sum = self.qbase.sum(1)
        self.count = T * R * int((npig > 0).sum())

    def _served(self, seg: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Number of recall points r with kmin(r) <= k (k new TPs reach them)."""
        kk = np.clip(k, 0, self.npig[seg])
        return np.where(k >= 0, self.t.lut[self.lut_lo[seg] + kk].astype(np.int64) + 1, 0)

    def marginal(self, images: np.ndarray, chunk: int = 64) -> Tuple[np.ndarray, np.ndarray]:
        """(approx, bound) per image: see the module doc."""
        out = np.zeros(len(images))
        bound = np.zeros(len(images))
        if not self.count:
            return out * np.nan, bound
        for lo in range(0, len(images), chunk):
            ids = np.asarray(images[lo : lo + chunk], np.int64)
            d, b = self._chunk(ids)
            out[lo : lo + chunk], bound[lo : lo + chunk] = d, b
        return 100 * out / self.count, 100 * bound / self.count

    def _events(self, ids: np.ndarray):
        """Image ``ids``' rows in area-'all' segments: (local image, segment, query row, da, db,
        is a saver TP, item index or -1), unsorted."""
        from .coco_sweep import _ranges

        t, ncat = self.t, self.ncat
        i0 = int(t.seg_start[self.nseg])
        n_it = t.item_off[ids + 1] - t.item_off[ids]
        it = t.item_order[_ranges(t.item_off[ids], t.item_off[ids + 1])].astype(np.int64)
        loc = np.repeat(np.arange(len(ids)), n_it)
        keep = it < i0
        it, loc = it[keep], loc[keep]
        sign = np.where(t.item_base[it], -1, 1)
        tp, part = t.item_tp[it], t.item_part[it]
        f = (
            _ranges(t.fv_off[0, ids], t.fv_off[0, ids + 1])
            if len(t.fv_off)
            else np.zeros(0, np.int64)
        )
        floc = (
            np.repeat(np.arange(len(ids)), t.fv_off[0, ids + 1] - t.fv_off[0, ids])
            if len(t.fv_off)
            else f
        )
        qs = t.fv_qs[f].astype(np.int64)
        w = t.fv_w[f].astype(np.int64)
        fcat = self.q_cat[qs] if len(qs) else qs
        nf = len(f)
        tt = np.repeat(np.arange(T), nf)
        return (
            np.r_[loc, np.tile(floc, T)],
            np.r_[self.it_seg[it], tt * ncat + np.tile(fcat, T)],
            np.r_[t.item_qr[it].astype(np.int64), np.tile(qs, T)],
            np.r_[sign * tp, np.zeros(T * nf, np.int64)],
            np.r_[sign * part, np.tile(w, T)],
            np.r_[(sign > 0) & tp, np.zeros(T * nf, bool)],
            np.r_[it, np.full(T * nf, -1, np.int64)],
        )

    def _chunk(self, ids: np.ndarray):
        loc, seg, q, da, db, new_tp, item = self._events(ids)
        keep = self.defined[seg]  # a category without ground truth never enters the AP
        loc, seg, q, da, db, new_tp, item = (x[keep] for x in (loc, seg, q, da, db, new_tp, item))
        if not len(loc):
            return np.zeros(len(ids)), np.zeros(len(ids))
        nq = max(self.nq, 1)
        g = seg * len(ids) + loc  # segment-major: its TPs stay in cache
        key = g * nq + q
        o = np.argsort(key, kind="stable")
        loc, seg, q, da, db, new_tp, item, g, key = (
            x[o] for x in (loc, seg, q, da, db, new_tp, item, g, key)
        )
        gstart = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        ng, ne = len(gstart), len(g)
        glen = np.diff(np.r_[gstart, ne])
        gid = np.repeat(np.arange(ng), glen)  # group index per event
        ca, cb = np.cumsum(da), np.cumsum(db)
        ca -= np.repeat(ca[gstart] - da[gstart], glen)  # inclusive, within the group
        cb -= np.repeat(cb[gstart] - db[gstart], glen)
        tp_off = self.tp_off
        base = tp_off[seg]
        # Old TPs of the segment before the event's row (global index); an item's is cbt.
        is_it = item >= 0
        lt = np.empty(ne, np.int64)
        lt[is_it] = base[is_it] + self.cbt[item[is_it]]
        fv = ~is_it
        lt[fv] = np.searchsorted(self.tp_key, 2 * (seg[fv] * nq + q[fv]))
        # After the event, image i's own old TP at that row (if any) is gone.
        at = np.minimum(lt, max(len(self.tp_key) - 1, 0))
        own_tp = (
            (lt < tp_off[seg + 1])
            & (self.tp_key[at] == 2 * (seg * nq + q))
            & (self.q_img[q] == ids[loc])
        )
        # Pieces: the group's head (before its first event), then one after each event.
        pos_e = np.arange(ne) + gid + 1
        pos_h = gstart + np.arange(ng)
        npc = ne + ng
        p_g = np.empty(npc, np.int64)
        p_g[pos_h], p_g[pos_e] = np.arange(ng), gid
        p_seg = np.empty(npc, np.int64)
        p_seg[pos_h], p_seg[pos_e] = seg[gstart], seg
        p_a = np.zeros(npc, np.int64)
        p_b = np.zeros(npc, np.int64)
        p_a[pos_e], p_b[pos_e] = ca, cb
        p_base = tp_off[p_seg]
        p_lo = p_base.copy()  # global [lo, hi) of old TPs
        p_lo[pos_e] = lt + own_tp
        p_hi = np.empty(npc, np.int64)
        p_hi[pos_h] = lt[gstart]
        nxt_same = np.r_[g[1:] == g[:-1], False]
        p_hi[pos_e] = np.where(nxt_same, np.r_[lt[1:], 0], tp_off[seg + 1])
        full = p_hi > p_lo
        # Each piece alone, from its first TP: candidate value and upper bound.
        c0, u0 = self._cand_ub(np.where(full, p_lo, 0), p_hi, p_a, p_b)
        c0, u0 = np.where(full, c0, 0.0), np.where(full, u0, 0.0)
        # Suffix maxima over the later pieces of the group.
        nxt_p = np.r_[p_g[1:] == p_g[:-1], False]
        later_c = np.where(nxt_p, np.r_[_suffix_max(c0, p_g)[1:], 0], 0)
        later_u = np.where(nxt_p, np.r_[_suffix_max(u0, p_g)[1:], 0], 0)
        # Recall points served by each piece: kmin(r) in (reach of the pieces before, reach].
        reach = np.where(full, p_hi - p_base + p_a, -1)  # new count of its last TP
        big = 1 << 40
        reach = np.maximum.accumulate(reach + p_g * big) - p_g * big
        served = self._served(p_seg, reach)
        prev = np.where(np.r_[False, p_g[1:] == p_g[:-1]], np.r_[0, served[:-1]], 0)
        n_r = np.maximum(served - prev, 0)
        pe = np.repeat(np.arange(npc), n_r)
        r = np.arange(len(pe)) - np.repeat(np.cumsum(n_r) - n_r - prev, n_r)
        a_ = p_a[pe]
        jmin = np.maximum(p_lo[pe], self.kmin1[p_seg[pe] * R + r] - a_)
        c, u = self._cand_ub(jmin, p_hi[pe], a_, p_b[pe])
        grid_c = np.zeros(ng * R)
        grid_u = np.zeros(ng * R)
        cell = p_g[pe] * R + r
        grid_c[cell] = np.maximum(c, later_c[pe])
        grid_u[cell] = np.maximum(u, later_u[pe])
        del pe, r, a_, jmin, c, u, cell
        # Image i's saver TPs: exact new counts and precision; they reach r <= lut[k'].
        x = np.flatnonzero(new_tp)
        if len(x):
            it = item[x]
            last = np.searchsorted(key, key[x], side="right") - 1  # offsets at "<= q"
            k_new = self.cbt[it] + ca[last]
            nv_new = self.t._fv_all_base[q[x]] + self.cbp[it] + cb[last]
            val = _suffix_max(k_new / (nv_new + EPS), g[x])
            sv = self._served(seg[x], k_new)
            gx = gid[x]
            sprev = np.where(np.r_[False, gx[1:] == gx[:-1]], np.r_[0, sv[:-1]], 0)
            n_s = np.maximum(sv - sprev, 0)
            xe = np.repeat(np.arange(len(x)), n_s)
            cell = gx[xe] * R + np.arange(len(xe)) - np.repeat(np.cumsum(n_s) - n_s - sprev, n_s)
            grid_c[cell] = np.maximum(grid_c[cell], val[xe])
            grid_u[cell] = np.maximum(grid_u[cell], val[xe])
        gseg = seg[gstart]
        sum_c = grid_c.reshape(ng, R).sum(1)
        delta = sum_c - self.qbase_sum[gseg]
        slack = grid_u.reshape(ng, R).sum(1) - sum_c
        g_loc = loc[gstart]
        return (
            np.bincount(g_loc, delta, minlength=len(ids)),
            np.bincount(g_loc, slack, minlength=len(ids)),
        )

    def _cand_ub(self, j, hi, a, b):
        """For old TPs [j, hi) (global indices, j < hi, one piece) with offsets (a, b): the new
        precision of the first old suffix maximum at or after j if it lies before hi (else 0),
        and the bound max(V, (V nv + a) / (nv + b)) at j (see the module doc)."""
        s = self.nxt[j]
        in_p = s < hi
        c = np.where(in_p, (self.k[s] + a) / (self.nv[s] + b + EPS), 0.0)
        v, nv = self.V[j], self.nv[j]
        with np.errstate(divide="ignore", invalid="ignore"):
            f = (v * nv + a) / (nv + b)
        u = np.where((a == 0) & (b == 0), v, np.minimum(np.maximum(v, f) + SLACK, 1.0 + SLACK))
        return c, np.maximum(u, c)
