"""How the cost of COCO metrics grows with the number of cached images (coco_fast vs pycocotools).

Measures, on synthetic cached predictions (~10 GT and 100 detections per image, 2 sources):
* per-image AP targets of one source (what the evaluator learns),
* a calibration sweep: MatchTable.build for saver+base, then ``--thresholds`` merged
  COCO evaluations (choice = routing score < threshold),
* one pycocotools COCOeval (bbox) at 1k images, for comparison.
Prints a table and writes JSON (``--out``).
"""
import argparse
import contextlib
import io
import json
import os
import platform
import time

import numpy as np

from tinysaver_det.evaluation.coco_fast import ImageDets, ImageGT, MatchTable, per_image_ap_batch


def synth(n_img, seed=0, n_gt=10, n_det=100, ncat=20):
    """Random GT over all area ranges; saver = noisy detections, base = tighter ones."""
    rng = np.random.default_rng(seed)
    gts, saver, base = [], [], []
    for _ in range(n_img):
        g = rng.poisson(n_gt)
        wh = rng.choice([12.0, 24.0, 48.0, 80.0, 160.0], (g, 1)) * rng.uniform(0.6, 1.6, (g, 2))
        boxes = np.concatenate([rng.uniform(0, 500, (g, 2)), wh], 1)
        cats = rng.integers(1, ncat + 1, g)
        gts.append(ImageGT(boxes, cats, rng.random(g) < 0.03, wh[:, 0] * wh[:, 1] * 0.8))
        for out, noise in ((saver, 0.15), (base, 0.05)):
            near = rng.integers(0, max(g, 1), n_det // 2) if g else np.zeros(0, int)
            d_near = boxes[near] + rng.normal(0, noise, (len(near), 4)) * np.repeat(wh[near], 2, 1)
            fp = np.concatenate([rng.uniform(0, 500, (n_det - len(near), 2)),
                                 rng.uniform(8, 200, (n_det - len(near), 2))], 1)
            b = np.concatenate([d_near, fp])
            b[:, 2:] = np.abs(b[:, 2:]) + 1
            c = np.concatenate([cats[near], rng.integers(1, ncat + 1, len(fp))])
            out.append(ImageDets(b, rng.random(len(b)), c))
    return gts, saver, base


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def pycocotools_time(gts, dets):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    anns, aid = [], 1
    for i, g in enumerate(gts):
        for b, c, cr, ar in zip(g.boxes, g.category_ids, g.iscrowd, g.area):
            anns.append(dict(id=aid, image_id=i + 1, category_id=int(c), bbox=b.tolist(),
                             iscrowd=int(cr), area=float(ar)))
            aid += 1
    res = [dict(image_id=i + 1, category_id=int(c), bbox=b.tolist(), score=float(s))
           for i, d in enumerate(dets) for b, s, c in zip(d.boxes, d.scores, d.category_ids)]
    cats = sorted({int(c) for g in gts for c in g.category_ids})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = dict(images=[dict(id=i + 1) for i in range(len(gts))],
                          categories=[dict(id=c) for c in cats], annotations=anns)
        gt.createIndex()
        t = time.perf_counter()
        ev = COCOeval(gt, gt.loadRes(res), "bbox")
        ev.evaluate(); ev.accumulate(); ev.summarize()
    return time.perf_counter() - t, ev.stats[0]


def machine():
    import torch
    return dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                cpu_count=os.cpu_count(), python=platform.python_version(),
                numpy=np.__version__, torch=torch.__version__)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    ap.add_argument("--thresholds", type=int, default=100)
    ap.add_argument("--pycoco-images", type=int, default=1000)
    ap.add_argument("--out", default="output/bench/cost_growth.json")
    args = ap.parse_args()

    rows = []
    for n in args.sizes:
        gts, saver, base = synth(n, seed=n)
        _, t_target = timed(lambda: per_image_ap_batch(gts, saver))
        table, t_build = timed(lambda: MatchTable.build(gts, {"saver": saver, "base": base}))
        scores = np.random.default_rng(1).random(n)
        thr = np.linspace(0, 1, args.thresholds)
        _, t_sweep = timed(lambda: [table.coco_metrics((scores < t).astype(int)) for t in thr])
        rows.append(dict(images=n, per_image_ap_s=t_target, build_s=t_build, sweep_s=t_sweep,
                         sweep_point_s=t_sweep / len(thr), calibration_total_s=t_build + t_sweep,
                         thresholds=len(thr)))
        print(f"done {n} images", flush=True)
    n_py = args.pycoco_images
    gts, saver, _ = synth(n_py, seed=n_py)
    t_py, ap_py = pycocotools_time(gts, saver)
    table = MatchTable.build(gts, {"saver": saver})
    ap_fast = table.coco_metrics(np.zeros(n_py, int))["AP"] / 100
    _, t_fast = timed(lambda: MatchTable.build(gts, {"saver": saver}).coco_metrics(np.zeros(n_py, int)))

    info = machine()
    print(f"\nmachine: {info}")
    print(f"{'images':>7} | {'per-image AP':>12} | {'build 2 src':>11} | {'sweep':>14} | {'per point':>9} | {'calib total':>11}")
    for r in rows:
        print(f"{r['images']:>7} | {r['per_image_ap_s']:>11.2f}s | {r['build_s']:>10.2f}s | "
              f"{r['sweep_s']:>7.2f}s ({r['thresholds']}) | {r['sweep_point_s']:>8.3f}s | {r['calibration_total_s']:>10.2f}s")
    print(f"pycocotools COCOeval at {n_py} images: {t_py:.2f}s (AP {ap_py:.6f}); "
          f"coco_fast build+metrics same data: {t_fast:.2f}s (AP {ap_fast:.6f}); "
          f"a {args.thresholds}-point sweep with pycocotools ~{t_py * args.thresholds:.0f}s")
    out = dict(machine=info, rows=rows,
               pycocotools=dict(images=n_py, cocoeval_s=t_py, ap=float(ap_py),
                                coco_fast_s=t_fast, coco_fast_ap=ap_fast))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
