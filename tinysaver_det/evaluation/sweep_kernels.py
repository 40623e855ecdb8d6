"""Compiled (numba) loops of ``coco_sweep``'s incremental sweep: one swap, one pruned evaluation.

Why compiled: at 118k images a sweep step moves ~1k images (~340k items, ~460k ``fv`` entries
scattered over the whole table) and a point bounds ~70k coarse blocks; in numpy the scattered
updates (``np.add.at``) and the per-level temporaries cost ~0.3 s a point, which puts a 4 x 100
point sweep above its 60 s target (bench/cost_growth.py). These loops do the same work as
``SweepTable._precision_numpy`` and ``_State.swap_numpy`` without temporaries and give the same
floats (same integer counts, same ``k / (nv + eps)``); tests compare both paths bit for bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def key_positions(keys, nxt):
    """Positions of a stable counting sort: row i goes to nxt[keys[i]], which then advances."""
    pos = np.empty(len(keys), np.int64)
    for i in range(len(keys)):
        k = keys[i]
        pos[i] = nxt[k]
        nxt[k] += 1
    return pos


@njit(cache=True, nogil=True)
def area_items(tp, valid, cat, img, src, q_first, seg_first, ncat, nt):
    """The items of one area range (``SweepTable.__init__``), threshold by threshold in row
    order: rows that are a TP at t, or valid at t but not at every threshold (partial).
    Returns (segment, tp, partial, query row, image, source) per item; ``q_first``: the
    query row of the area's first query row (rows with tp at some t or partial), segment =
    seg_first + t * ncat + category; ``nt``: IoU thresholds (bits)."""
    all_t = (1 << nt) - 1
    n = 0
    for i in range(len(tp)):
        part = valid[i] != all_t
        for t in range(nt):
            n += (tp[i] >> t) & 1 or (part and (valid[i] >> t) & 1)
    seg = np.empty(n, np.int32)
    is_tp = np.empty(n, np.bool_)
    is_part = np.empty(n, np.bool_)
    qr = np.empty(n, np.int32)
    im = np.empty(n, np.int32)
    sr = np.empty(n, np.int8)
    j = 0
    for t in range(nt):
        q = q_first
        for i in range(len(tp)):
            part = valid[i] != all_t
            hit = (tp[i] >> t) & 1
            if hit or (part and (valid[i] >> t) & 1):
                seg[j] = seg_first + t * ncat + cat[i]
                is_tp[j] = hit
                is_part[j] = part
                qr[j] = q
                im[j] = img[i]
                sr[j] = src[i]
                j += 1
            if tp[i] != 0 or part:
                q += 1
    return seg, is_tp, is_part, qr, im, sr


@njit(cache=True, nogil=True)
def _desc_key(bits):
    """uint32 key ascending as the float32 with these bits descends (-0.0 as 0.0; no NaN)."""
    if bits == 0x80000000:
        bits = 0
    up = ~bits if bits & 0x80000000 else bits | 0x80000000  # ascending with the float
    return ~up & 0xFFFFFFFF


@njit(cache=True, nogil=True)
def accumulate_order(img, src, cat, score_bits, num_img, ncat, order):
    """np.lexsort((rank, src, img, -score, cat)) for rows given per image and source in rank
    order within each category (as build_streaming collects them): stable counting sorts by
    (image, source), then the score's low and high 16 bits (descending), then the category.
    ``score_bits``: float32 scores viewed as uint32, none NaN. ``order``: arange(rows) of an
    integer type that holds them (overwritten)."""
    n = len(img)
    out = np.empty_like(order)
    for p in range(4):
        nb = 2 * num_img if p == 0 else (65536 if p < 3 else ncat)
        pos = np.zeros(nb + 1, np.int64)
        for j in range(n):
            pos[_pass_key(p, order[j], img, src, cat, score_bits) + 1] += 1
        for b in range(nb):
            pos[b + 1] += pos[b]
        for j in range(n):
            i = order[j]
            k = _pass_key(p, i, img, src, cat, score_bits)
            out[pos[k]] = i
            pos[k] += 1
        order, out = out, order
    return order


@njit(cache=True, nogil=True)
def _pass_key(p, i, img, src, cat, score_bits):
    if p == 0:
        return 2 * np.int64(img[i]) + src[i]
    if p == 1:
        return np.int64(_desc_key(score_bits[i]) & 0xFFFF)
    if p == 2:
        return np.int64(_desc_key(score_bits[i]) >> 16)
    return np.int64(cat[i])


@njit(cache=True, nogil=True)
def _segment_of(seg_start, item):
    """Segment holding ``item``: the last s with seg_start[s] <= item (branch-free search)."""
    lo, n = 0, len(seg_start) - 1
    while n > 1:
        half = n // 2
        lo = lo + half if seg_start[lo + half] <= item else lo
        n -= half
    return lo


@njit(cache=True, nogil=True)
def swap_items(images, item_off, item_order, flags, seg_start, seg_blk, sizes, blk_off, blk,
               item_lo, item_hi):  # fmt: skip
    """Flip the kept bit (1) of every item of ``images`` in ``flags`` (bit 2: TP, 4: partial)
    and update the kept TPs / partials (``blk[:, 0]`` / ``blk[:, 1]``) of its block at every
    level (``blk[blk_off[l] + seg_blk[l, s] + offset_in_segment // sizes[l]]``). Only items in
    ``[item_lo, item_hi)``: calls on disjoint ranges of whole segments touch disjoint memory,
    so they can run in parallel threads."""
    for i in images:
        for j in range(item_off[i], item_off[i + 1]):
            it = item_order[j]
            if it < item_lo or it >= item_hi:
                continue
            f = flags[it] ^ 1
            flags[it] = f
            sign = 2 * (f & 1) - 1
            dt = sign * ((f >> 1) & 1)
            dp = sign * ((f >> 2) & 1)
            s = _segment_of(seg_start, it)
            off = it - seg_start[s]
            for lv in range(len(sizes)):
                b = blk_off[lv] + seg_blk[lv, s] + off // sizes[lv]
                blk[b, 0] += dt
                blk[b, 1] += dp


@njit(cache=True, nogil=True)
def shift_fv(images, fv_off, fv_qs, fv_w, q_end, fv, sign, scratch, a_lo, a_hi, q_lo, q_hi):
    """Add ``sign * fv_w`` of every fv entry of ``images`` to fv[qs:q_end[qs]] (a difference
    array, then one running sum; ``scratch``: zeros of len(fv) + 1, left zeroed). Entries are
    grouped by area, then image, in row order (``SweepTable.__init__``). Only areas
    ``[a_lo, a_hi)``, whose query rows are ``[q_lo, q_hi)`` (a range never ends past its
    area's rows), so calls on disjoint areas can run in parallel threads."""
    for a in range(a_lo, a_hi):
        for i in images:
            # An image's entries ascend in q and its categories with them: q_end changes only
            # where a category ends, and its -w are summed until then.
            end, acc = -1, 0
            for f in range(fv_off[a, i], fv_off[a, i + 1]):
                q = fv_qs[f]
                w = sign * fv_w[f]
                scratch[q] += w
                if q >= end:
                    if 0 <= end < q_hi:
                        scratch[end] -= acc
                    end, acc = q_end[q], 0
                acc += w
            if 0 <= end < q_hi:  # at q_hi: past the running sum below
                scratch[end] -= acc
    run = 0
    for q in range(q_lo, q_hi):
        run += scratch[q]
        scratch[q] = 0
        fv[q] += run


@njit(cache=True, nogil=True)
def bucket_maxima(seg_lo, seg_hi, seg_start, flags, item_qr, fv, lut, seg_lut, seg_blk0, blk0,
                  qb0, s0, seg_blk1, blk1, qb1, s1, nr, eps, q):  # fmt: skip
    """Per (segment, recall bucket), the best precision of the kept TPs that can hold a maximum
    of COCOeval's monotone precision (the others: 0 or lower); exact after the suffix maximum.
    Segments ``[seg_lo, seg_hi)``, written to ``q[s * nr:(s + 1) * nr]`` (zeros on entry):
    calls on disjoint segments can run in parallel threads.

    ``flags``: per item, bit 1 kept, 2 TP, 4 partial. Two levels of blocks: ``s0`` items
    (``seg_blk0[s]``: first block of segment s, ``blk0[:, 0]`` / ``blk0[:, 1]``: kept TPs /
    partials per block, ``qb0``: query row of its last item), each cut into blocks of ``s1``
    items (``*1``). Per segment: (1) lower bounds L (as in
    ``SweepTable._precision_numpy``) of the level-0 blocks, (2) those of the level-1 blocks
    inside the level-0 blocks not ruled out by (1): ``env``, the suffix maximum of L per
    bucket, lower-bounds COCOeval's precision. (3) Blocks are walked backwards keeping ``m``,
    the best exact precision after the current block (its TPs have later buckets): a block
    whose upper bound U is < env[its last bucket] or <= m holds no TP that sets a maximum and
    is skipped; the level-1 blocks left are evaluated exactly. U counts as valid rows before a
    block only fv at the previous block's last item (read for L; fv grows along a category)
    plus the partials: a little above ``_precision_numpy``'s bound, still an upper bound."""
    low = np.zeros(nr)
    env = np.zeros(nr)
    n0 = seg_blk0[1:] - seg_blk0[:-1]
    n1 = seg_blk1[1:] - seg_blk1[:-1]
    up0 = np.empty(n0.max() if len(n0) else 0)
    fe0 = np.empty(len(up0))  # fv at each level-0 block's last item
    fe1 = np.empty(n1.max() if len(n1) else 0)  # the same for level-1 blocks (open ones)
    ratio = s0 // s1
    for s in range(seg_lo, seg_hi):
        lo, hi = seg_start[s], seg_start[s + 1]
        if lo == hi:
            continue
        c0, nc = seg_blk0[s], seg_blk0[s + 1] - seg_blk0[s]
        f0, f1 = seg_blk1[s], seg_blk1[s + 1]
        lut0, base = seg_lut[s], s * nr
        low[:] = 0.0
        k, p = 0, 0
        for b in range(nc):  # (1) the block's last TP, counted at the block's end
            kt, kp = blk0[c0 + b, 0], blk0[c0 + b, 1]
            fe0[b] = fv[qb0[c0 + b]]
            if kt > 0:
                x = (k + kt) / (fe0[b] + (p + kp) + eps)
                r = lut[lut0 + k + kt]
                if x > low[r]:
                    low[r] = x
            k += kt
            p += kp
        _suffix_max(low, env)
        k, p = 0, 0
        for b in range(nc):  # (2) level-1 lower bounds in the blocks still open
            kt, kp = blk0[c0 + b, 0], blk0[c0 + b, 1]
            up0[b] = -1.0
            if kt > 0:
                up0[b] = (k + kt) / ((fe0[b - 1] if b else 0.0) + p + kt + eps)
                if up0[b] >= env[lut[lut0 + k + kt]]:
                    ka, pa = k, p
                    for b1 in range(f0 + b * ratio, min(f0 + (b + 1) * ratio, f1)):
                        t1, q1 = blk1[b1, 0], blk1[b1, 1]
                        fe1[b1 - f0] = fv[qb1[b1]]
                        if t1 > 0:
                            x = (ka + t1) / (fe1[b1 - f0] + (pa + q1) + eps)
                            r = lut[lut0 + ka + t1]
                            if x > low[r]:
                                low[r] = x
                        ka += t1
                        pa += q1
            k += kt
            p += kp
        _suffix_max(low, env)
        m = -1.0
        for b in range(nc - 1, -1, -1):  # (3)
            kt, kp = blk0[c0 + b, 0], blk0[c0 + b, 1]
            k -= kt
            p -= kp
            if kt == 0 or up0[b] <= m or up0[b] < env[lut[lut0 + k + kt]]:
                continue
            ka, pa = k + kt, p + kp
            first1 = f0 + b * ratio
            for b1 in range(min(first1 + ratio, f1) - 1, first1 - 1, -1):
                t1, q1 = blk1[b1, 0], blk1[b1, 1]
                ka -= t1
                pa -= q1
                if t1 == 0:
                    continue
                if b1 > first1:
                    before = fe1[b1 - f0 - 1]
                else:
                    before = fe0[b - 1] if b else 0.0
                up = (ka + t1) / (before + pa + t1 + eps)
                if up <= m or up < env[lut[lut0 + ka + t1]]:
                    continue
                kk, pp, best = ka, pa, -1.0
                first = lo + (b1 - f0) * s1
                for it in range(first, min(first + s1, hi)):  # branch-free: kept bits mix
                    f = flags[it]
                    tp = (f >> 1) & f & 1
                    pp += (f >> 2) & f & 1
                    kk += tp
                    pr = kk / (fv[item_qr[it]] + pp + eps)
                    pr = pr if tp else -1.0
                    r = base + lut[lut0 + kk]
                    q[r] = max(q[r], pr)
                    best = max(best, pr)
                if best > m:
                    m = best


@njit(cache=True, nogil=True)
def _suffix_max(x, out):
    """out[r] = max(x[r:])."""
    run = 0.0
    for r in range(len(x) - 1, -1, -1):
        if x[r] > run:
            run = x[r]
        out[r] = run
