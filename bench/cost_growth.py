"""How calibration and evaluator training grow with the number of cached images (to COCO scale).

Synthetic cached outputs, no detectors: per image ~10 GT, a saver (noisy) and a base (tight)
with 100 detections each, ``--views`` records per image (view 0 holds the detections) with a
summary vector of ~4.6 KB (the DetectionQualityHead's input). The cache is written in the real
format (``engine.cache_store``, chunks of 1000 images). Each stage runs in its own process, so
its peak RSS (VmHWM, imports included) is its own:

* load      read what calibration reads (views, confidences, both sources' detections) into
            contiguous arrays,
* targets   per-image AP of saver and base for every image (the cached quality targets),
* build     SweepTable.build_streaming, one cache chunk at a time (matching, presorting),
* sweep     ``--routers`` routers x ``--thresholds`` thresholds (calibration.candidate_thresholds);
            above ``--extrapolate-above`` images only ``--max-sweep-steps`` steps per router
            are timed and the rest extrapolated at the measured time per step (marked in the
            table and the JSON; ``--extrapolate-above 200000`` times every step),
* marginal  SweepTable.marginal_ap_bound for every image (near-linear, with an error bound),
            timed in full; the exact, quadratic method on ``--max-marginal-images`` images
            (timed, extrapolated, and compared with the approximation),
* train     one epoch of the DetectionQualityHead over all records' summaries (batches of 256,
            streamed chunk by chunk).

Also one pycocotools COCOeval at ``--pycoco-images`` for scale. Prints a table with the fitted
growth exponent of each stage (slope of log time over log images) and writes JSON (``--out``).
"""

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from tinysaver_det.evaluation.flat import FlatDets, FlatGT
from tinysaver_det.metrics.coco_fast import per_image_ap_batch

CHUNK = 1000
NCAT = 20
IN_CHANNELS = [128, 128, 128, 128]  # summary: 2*512 + statistics(80 classes, top 20) = 1149
STAGES = ("load", "targets", "build", "sweep", "marginal", "train")
DEFAULT_STAGES = ("load", "targets", "sweep", "train")  # sweep: build, sweeps, then marginal


# ------------------------------------------------------------------------------------ data
def synth_flat(n_img, seed=0, n_gt=10, n_det=100, ncat=NCAT, scores="random"):
    """Random GT over all area ranges; saver = noisy detections, base = tighter; flat arrays.
    ``scores``: "random" (uniform, unrelated to correctness: flat precision) or "informative"
    (detections near a GT score higher, as a trained detector's do: Beta(3, 1.5) near,
    Beta(1.5, 3) elsewhere)."""
    rng = np.random.default_rng(seed)
    g = rng.poisson(n_gt, n_img)
    goff = np.r_[0, np.cumsum(g)]
    G = int(goff[-1])
    wh = rng.choice([12.0, 24.0, 48.0, 80.0, 160.0], (G, 1)) * rng.uniform(0.6, 1.6, (G, 2))
    boxes = np.concatenate([rng.uniform(0, 500, (G, 2)), wh], 1)
    cats = rng.integers(1, ncat + 1, G)
    gt = FlatGT(boxes, cats, rng.random(G) < 0.03, wh[:, 0] * wh[:, 1] * 0.8, goff)
    out = []
    for noise in (0.15, 0.05):
        near_n = np.where(g > 0, n_det // 2, 0)
        img_near = np.repeat(np.arange(n_img), near_n)
        idx = goff[img_near] + (rng.random(len(img_near)) * g[img_near]).astype(np.int64)
        d_near = boxes[idx] + rng.normal(0, noise, (len(idx), 4)) * np.repeat(wh[idx], 2, 1)
        fp_n = n_det - near_n
        F = int(fp_n.sum())
        fp = np.concatenate([rng.uniform(0, 500, (F, 2)), rng.uniform(8, 200, (F, 2))], 1)
        o = np.argsort(np.r_[img_near, np.repeat(np.arange(n_img), fp_n)], kind="stable")
        b = np.concatenate([d_near, fp])[o]
        b[:, 2:] = np.abs(b[:, 2:]) + 1
        c = np.concatenate([cats[idx], rng.integers(1, ncat + 1, F)])[o]
        sc = (
            rng.random(len(b))
            if scores == "random"
            else np.r_[rng.beta(3, 1.5, len(idx)), rng.beta(1.5, 3, F)][o]
        )
        out.append(
            FlatDets(
                b.astype(np.float32),
                sc.astype(np.float32),
                c.astype(np.int64),
                np.arange(n_img + 1) * n_det,
            )
        )
    return gt, out[0], out[1]


def summary_dim():
    from tinysaver_det.modeling.evaluator_head import statistics_dim

    return 2 * sum(IN_CHANNELS) + statistics_dim(80, 20)


def write_cache(folder, n, views, scores="random"):
    """A format-2 cache of n images (+ the GT beside it, as the dataset would provide it)."""
    from tinysaver_det.engine.cache_store import write_chunk

    key = {"format": 2, "bench": n, "views": views, "scores": scores}
    dim = summary_dim()
    for c, lo in enumerate(range(0, n, CHUNK)):
        m = min(CHUNK, n - lo)
        gt, saver, base = synth_flat(m, seed=1000 + c, scores=scores)
        rng = np.random.default_rng(c)
        rec = m * views
        arrays = {
            "image_id": np.repeat(np.arange(lo, lo + m), views),
            "view": np.tile(np.arange(views), m),
            "saver_ap": rng.random(rec),
            "base_ap": rng.random(rec),
            "confidence": rng.random(rec),
            "summary": rng.normal(size=(rec, dim)).astype(np.float32),
        }
        arrays["index"] = arrays["image_id"]
        for name, d in (("saver", saver), ("base", base)):
            per_rec = np.where(arrays["view"] == 0, np.diff(d.offsets)[arrays["index"] - lo], 0)
            arrays.update(
                {
                    f"{name}_offsets": np.r_[0, np.cumsum(per_rec)],
                    f"{name}_boxes": d.boxes,
                    f"{name}_scores": d.scores,
                    f"{name}_category_ids": d.category_ids,
                }
            )
        write_chunk(os.path.join(folder, f"chunk_{c:05d}.npz"), key, arrays)
        np.savez(
            os.path.join(folder, f"gt_{c:05d}.npz"),
            boxes=gt.boxes,
            category_ids=gt.category_ids,
            iscrowd=gt.iscrowd,
            area=gt.area,
            offsets=gt.offsets,
        )
    return key


def chunks(folder, key, columns=None):
    from tinysaver_det.engine.cache_store import read_chunk

    files = sorted(f for f in os.listdir(folder) if f.startswith("chunk_"))
    for f in files:
        yield f, read_chunk(os.path.join(folder, f), key, columns)


def gt_of(folder, chunk_file):
    z = np.load(os.path.join(folder, chunk_file.replace("chunk_", "gt_")))
    return FlatGT(z["boxes"], z["category_ids"], z["iscrowd"], z["area"], z["offsets"])


def view0_dets(arrays, name):
    """FlatDets of the view-0 records (the others have no detections)."""
    from tinysaver_det.engine.cache_store import flat_dets

    d = flat_dets(arrays, name)
    keep = np.flatnonzero(arrays["view"] == 0)
    return FlatDets(d.boxes, d.scores, d.category_ids, np.r_[d.offsets[keep], d.offsets[-1]])


# ------------------------------------------------------------------------------------ stages
def stage_load(folder, key, args):
    """What calibration reads: every record's view, confidence and both sources' detections."""
    from tinysaver_det.engine.cache_store import concat_chunks

    arrays = concat_chunks([a for _, a in chunks(folder, key, key_columns() + ["confidence"])])
    return {"records": int(len(arrays["view"]))}


def stage_targets(folder, key, args):
    n = 0
    for f, a in chunks(folder, key):
        gts = gt_of(folder, f).chunk(0, int((a["view"] == 0).sum()))
        for name in ("saver", "base"):  # timed: the values are what a cache build stores
            per_image_ap_batch(gts, view0_dets(a, name).chunk(0, len(gts)))
        n += len(gts)
    return {"images": n}


def sweep_table(folder, key):
    from tinysaver_det.evaluation.coco_sweep import SweepTable

    def parts():
        for f, a in chunks(folder, key, key_columns()):
            gts = gt_of(folder, f).view(0, int((a["view"] == 0).sum()))  # flat: no object per image
            n = len(gts)
            yield gts, view0_dets(a, "saver").view(0, n), view0_dets(a, "base").view(0, n)

    return SweepTable.build_streaming(parts(), np.arange(1, NCAT + 1))


def key_columns():
    return ["view"] + [
        f"{s}_{c}"
        for s in ("saver", "base")
        for c in ("offsets", "boxes", "scores", "category_ids")
    ]


def stage_build(folder, key, args):
    t = sweep_table(folder, key)
    return {"items": int(len(t.item_tp))}


def stage_sweep(folder, key, args):
    from tinysaver_det.evaluation.calibration import candidate_thresholds
    from tinysaver_det.evaluation.coco_sweep import exit_steps

    t0 = time.perf_counter()
    table = sweep_table(folder, key)
    build_s = time.perf_counter() - t0
    n = table.num_images
    steps_total, steps_timed, t_steps = 0, 0, 0.0
    for r in range(args.routers):
        scores = np.random.default_rng(r).random(n)
        thr = candidate_thresholds(scores, args.thresholds)
        step, _ = exit_steps(scores, thr)
        cap = args.max_sweep_steps if n > args.extrapolate_above else None
        todo = len(thr) if cap is None else min(len(thr), cap)
        # Timing a prefix of the walk: later steps cost the same (one pass over kept items).
        step = np.where(step < todo, step, todo)
        t = time.perf_counter()
        table.sweep_metrics(step, todo)
        t_steps += time.perf_counter() - t
        steps_total += len(thr)
        steps_timed += todo
    per_step = t_steps / max(steps_timed, 1)
    marginal = None
    if args.max_marginal_images:  # on the same table: the build is shared with the sweep
        marginal = dict(time_marginal(table, args), build_s=build_s)
        marginal["seconds_total"] = build_s + marginal["marginal_only_s"]
    return {
        "marginal": marginal,
        "build_s": build_s,
        "steps": steps_total,
        "steps_timed": steps_timed,
        "per_step_s": per_step,
        "sweep_only_s": per_step * steps_total,
        "extrapolated": steps_timed < steps_total,
    }


def time_marginal(table, args):
    """The near-linear marginal AP (SweepTable.marginal_ap_bound) of every image, timed in full;
    then the exact (quadratic) one on ``--max-marginal-images`` images, timed and extrapolated,
    and compared: mean |exact - approx|, mean |exact| and mean bound on those images."""
    n = table.num_images
    t = time.perf_counter()
    value, bound = table.marginal_ap_bound()
    fast_s = time.perf_counter() - t
    todo = min(n, args.max_marginal_images)
    some = np.random.default_rng(0).permutation(n)[:todo]
    t = time.perf_counter()
    exact = table.marginal_ap(some, exact=True)
    per_image_exact = (time.perf_counter() - t) / max(todo, 1)
    err = exact - value[some]
    return {
        "marginal_only_s": fast_s,
        "per_image_s": fast_s / max(n, 1),
        "extrapolated": False,
        "exact_images_timed": todo,
        "exact_per_image_s": per_image_exact,
        "exact_all_s": per_image_exact * n,
        "mean_abs_error": float(np.abs(err).mean()) if todo else None,
        "mean_abs_exact": float(np.abs(exact).mean()) if todo else None,
        "mean_bound": float(bound[some].mean()) if todo else None,
        "bound_holds": bool(((err >= -1e-9) & (err <= bound[some] + 1e-9)).all()),
    }


def stage_marginal(folder, key, args):
    """SweepTable.marginal_ap_bound for every image (and the exact method on a sample)."""
    t0 = time.perf_counter()
    table = sweep_table(folder, key)
    build_s = time.perf_counter() - t0
    info = dict(time_marginal(table, args), build_s=build_s)
    info["seconds_total"] = build_s + info["marginal_only_s"]
    return info


def stage_train(folder, key, args):
    """One epoch as the trainer reads it: output_cache.examples_from_chunks (one summary array)."""
    import torch

    from tinysaver_det.engine.output_cache import examples_from_chunks
    from tinysaver_det.modeling.evaluator_head import DetectionQualityHead

    torch.manual_seed(0)
    ex = examples_from_chunks(lambda cols: (a for _, a in chunks(folder, key, cols)), "saver_ap")
    head = DetectionQualityHead(
        in_features=["p2", "p3", "p4", "p5"],
        in_channels=IN_CHANNELS,
        in_strides=[4, 8, 16, 32],
        num_classes=80,
    ).train()
    opt = torch.optim.SGD(head.parameters(), lr=0.01, momentum=0.9)
    order = np.random.default_rng(0).permutation(len(ex))
    steps = 0
    for lo in range(0, len(order) - 1, 256):
        idx = np.sort(order[lo : lo + 256])
        x = torch.from_numpy(ex.summary[idx])
        y = torch.from_numpy(ex.target[idx]).float()
        loss = sum(head.losses(head(x), y).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    return {"steps": steps, "examples": len(ex)}


def peak_rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_stage(args):
    key = json.load(open(os.path.join(args.dir, "key.json")))
    fn = globals()[f"stage_{args.stage}"]
    t = time.perf_counter()
    info = fn(args.dir, key, args)
    info.update(stage=args.stage, seconds=time.perf_counter() - t, peak_rss_mb=peak_rss_mb())
    if args.stage == "sweep":
        info["seconds"] = info["build_s"] + info["sweep_only_s"]  # build + all steps
    if args.stage == "marginal":
        info["seconds"] = info["seconds_total"]
    print("RESULT " + json.dumps(info), flush=True)


# ------------------------------------------------------------------------------------ driver
def pycocotools_time(n):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, saver, _ = synth_flat(n, seed=n)
    gts, dets = gt.chunk(0, n), saver.chunk(0, n)
    anns = [
        dict(
            id=len(gts) * 1000 + k,
            image_id=i + 1,
            category_id=int(c),
            bbox=b.tolist(),
            iscrowd=int(cr),
            area=float(ar),
        )
        for i, g in enumerate(gts)
        for k, (b, c, cr, ar) in enumerate(zip(g.boxes, g.category_ids, g.iscrowd, g.area))
    ]
    for j, a in enumerate(anns):
        a["id"] = j + 1
    res = [
        dict(image_id=i + 1, category_id=int(c), bbox=b.tolist(), score=float(s))
        for i, d in enumerate(dets)
        for b, s, c in zip(d.boxes, d.scores, d.category_ids)
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = dict(
            images=[dict(id=i + 1) for i in range(n)],
            categories=[dict(id=c) for c in range(1, NCAT + 1)],
            annotations=anns,
        )
        coco.createIndex()
        t = time.perf_counter()
        ev = COCOeval(coco, coco.loadRes(res), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return time.perf_counter() - t, float(ev.stats[0])


def machine():
    import torch

    return dict(
        platform=platform.platform(),
        processor=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(),
        python=platform.python_version(),
        numpy=np.__version__,
        torch=torch.__version__,
    )


def growth_exponent(sizes, seconds):
    ok = [(n, s) for n, s in zip(sizes, seconds) if s and s > 0]
    if len(ok) < 2:
        return float("nan")
    x, y = np.log([n for n, _ in ok]), np.log([s for _, s in ok])
    return float(np.polyfit(x, y, 1)[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 118000])
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--routers", type=int, default=4)
    ap.add_argument("--thresholds", type=int, default=100)
    ap.add_argument(
        "--max-sweep-steps",
        type=int,
        default=20,
        help="time only this many steps per router, extrapolate the rest",
    )
    ap.add_argument(
        "--extrapolate-above",
        type=int,
        default=50000,
        help="--max-sweep-steps applies only above this many images",
    )
    ap.add_argument(
        "--max-marginal-images",
        type=int,
        default=30,
        help="time the exact marginal_ap on this many images (0: no marginal stage inside sweep)",
    )
    ap.add_argument("--stages", nargs="+", default=list(DEFAULT_STAGES), choices=STAGES)
    ap.add_argument("--pycoco-images", type=int, default=1000)
    ap.add_argument(
        "--scores",
        choices=("random", "informative"),
        default="random",
        help="synthetic detection scores (see synth_flat)",
    )
    ap.add_argument("--out", default="output/bench/cost_growth.json")
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage:
        return run_stage(args)

    rows = []
    for n in args.sizes:
        folder = tempfile.mkdtemp(prefix=f"cost_growth_{n}_")
        try:
            t = time.perf_counter()
            key = write_cache(folder, n, args.views, args.scores)
            json.dump(key, open(os.path.join(folder, "key.json"), "w"))
            row = {"images": n, "records": n * args.views, "write_cache_s": time.perf_counter() - t}
            for stage in args.stages:
                cmd = [
                    sys.executable,
                    os.path.abspath(__file__),
                    "--stage",
                    stage,
                    "--dir",
                    folder,
                    "--routers",
                    str(args.routers),
                    "--thresholds",
                    str(args.thresholds),
                    "--max-marginal-images",
                    str(args.max_marginal_images),
                    "--extrapolate-above",
                    str(args.extrapolate_above),
                ]
                if args.max_sweep_steps:
                    cmd += ["--max-sweep-steps", str(args.max_sweep_steps)]
                out = subprocess.run(cmd, capture_output=True, text=True)
                lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
                if out.returncode or not lines:
                    raise RuntimeError(f"stage {stage} at {n} images failed:\n{out.stderr[-3000:]}")
                row[stage] = json.loads(lines[-1][len("RESULT ") :])
                if stage == "sweep" and row[stage].get("marginal"):
                    row["marginal"] = {
                        **row[stage].pop("marginal"),
                        "peak_rss_mb": row[stage]["peak_rss_mb"],
                    }
                    row["marginal"]["seconds"] = row["marginal"]["seconds_total"]
            rows.append(row)
            print(
                f"done {n} images: "
                + ", ".join(
                    f"{s} {row[s]['seconds']:.1f}s/{row[s]['peak_rss_mb']:.0f}MB"
                    for s in STAGES
                    if s in row
                ),
                flush=True,
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    sizes = [r["images"] for r in rows]
    shown = [s for s in STAGES if all(s in r for r in rows)]
    exps = {s: growth_exponent(sizes, [r[s]["seconds"] for r in rows]) for s in shown}
    info = machine()
    print(f"\nmachine: {info}")
    print(f"{'images':>7} | " + " | ".join(f"{s:>17}" for s in shown))
    for r in rows:
        cells = []
        for s in shown:
            mark = "*" if r[s].get("extrapolated") else " "  # sweep/marginal: partly extrapolated
            cells.append(f"{r[s]['seconds']:>7.1f}s{mark}{r[s]['peak_rss_mb']:>6.0f}MB")
        print(f"{r['images']:>7} | " + " | ".join(cells))
    print("growth  | " + " | ".join(f"{'N^%.2f' % exps[s]:>17}" for s in shown))
    for r in rows:
        if "sweep" in r:
            sw = r["sweep"]
            timed = f" (timed {sw['steps_timed']}, rest extrapolated)" if sw["extrapolated"] else ""
            print(
                f"sweep at {r['images']}: build {sw['build_s']:.1f}s, {sw['steps']} points "
                f"({args.routers} routers) {sw['sweep_only_s']:.1f}s = "
                f"{sw['per_step_s']:.3f}s/point{timed}"
            )
    for r in rows:
        if "marginal" in r:
            m = r["marginal"]
            print(
                f"marginal at {r['images']}: build {m['build_s']:.1f}s + all images "
                f"{m['marginal_only_s']:.1f}s ({1000 * m['per_image_s']:.2f} ms/image); "
                f"exact {m['exact_per_image_s']:.3f}s/image (~{m['exact_all_s']:.0f}s for all, "
                f"timed {m['exact_images_timed']}); on those: mean |error| "
                f"{m['mean_abs_error']:.2e}, mean |exact| {m['mean_abs_exact']:.2e}, "
                f"mean bound {m['mean_bound']:.2e}, bound holds: {m['bound_holds']}"
            )
    print("* = partly extrapolated from timed steps/images; RSS = peak of the stage's process")
    out = dict(
        machine=info,
        rows=rows,
        growth_exponent=exps,
        views=args.views,
        scores=args.scores,
        routers=args.routers,
        thresholds=args.thresholds,
    )
    if args.pycoco_images:
        t_py, ap_py = pycocotools_time(args.pycoco_images)
        print(
            f"pycocotools COCOeval (bbox) at {args.pycoco_images} images: {t_py:.2f}s "
            f"(AP {ap_py:.4f})"
        )
        out["pycocotools"] = dict(images=args.pycoco_images, cocoeval_s=t_py, ap=ap_py)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
