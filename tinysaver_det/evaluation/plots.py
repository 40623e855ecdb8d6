"""PNG plots of a calibration: accuracy against compute, score distributions, example images."""

import math
from typing import Dict, List, Sequence

import matplotlib

matplotlib.use("Agg")  # headless servers have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .calibration import ROUTER_LABELS  # noqa: E402

ROUTER_STYLE = {
    "evaluator": dict(color="tab:blue", lw=2.2),
    "confidence": dict(color="tab:orange", lw=1.6),
    "random": dict(color="tab:gray", lw=1.2, ls="--"),
    "oracle": dict(color="tab:green", lw=1.0, ls=":"),
    "marginal_oracle": dict(color="tab:green", lw=1.6, ls="-."),
    "difficulty": dict(color="tab:purple", lw=1.2, ls="--"),
}


def plot_accuracy_compute(
    curves: Dict[str, List[dict]],
    base: dict,
    saver: dict,
    chosen: dict,
    path: str,
    title: str = "",
    *,
    max_ap_drop: float,
    gflops_budget: float = 0.0,
) -> str:
    """
    AP against GFLOPs per image for every router; base and saver marked; the chosen point
    highlighted; the calibration's target drawn as calibration.choose_point reads it: the GFLOPs
    budget when there is one (> 0), else the lowest AP allowed (the base's AP - max_ap_drop).
    """
    fig = accuracy_compute_figure(
        curves, base, saver, chosen, title, max_ap_drop=max_ap_drop, gflops_budget=gflops_budget
    )
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def accuracy_compute_figure(
    curves, base, saver, chosen, title="", *, max_ap_drop: float, gflops_budget: float = 0.0
):
    """The figure of plot_accuracy_compute, left open."""
    fig, ax = plt.subplots(figsize=(9.5, 5))
    for router, points in curves.items():
        pts = sorted(points, key=lambda p: p["gflops"])
        ax.plot(
            [p["gflops"] for p in pts],
            [p["AP"] for p in pts],
            label=ROUTER_LABELS.get(router, router),
            **ROUTER_STYLE.get(router, {}),
        )
    ax.scatter(
        [base["gflops"]],
        [base["AP"]],
        marker="s",
        s=80,
        color="black",
        zorder=5,
        label="base alone",
    )
    ax.scatter(
        [saver["gflops"]],
        [saver["AP"]],
        marker="^",
        s=80,
        color="tab:red",
        zorder=5,
        label="saver alone",
    )
    ax.scatter(
        [chosen["gflops"]],
        [chosen["AP"]],
        marker="*",
        s=260,
        color="gold",
        edgecolor="black",
        zorder=6,
        label=f"chosen: t={chosen['threshold']:.3g}, exit {100 * chosen['exit_rate']:.0f}%",
    )
    target = dict(color="black", lw=0.6, ls="--", alpha=0.5)
    if gflops_budget > 0:
        ax.axvline(gflops_budget, label=f"target: {gflops_budget:g} GFLOPs", **target)
    else:
        ax.axhline(base["AP"] - max_ap_drop, label=f"target: AP drop <= {max_ap_drop:g}", **target)
    ax.set_xlabel("GFLOPs per image")
    ax.set_ylabel("COCO box AP")
    ax.set_title(title or "TinySaver: accuracy for compute")
    ax.grid(alpha=0.3)
    # Beside the axes, not on them: inside, it covered the curves' right end and the base.
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8)
    fig.tight_layout()
    return fig


def plot_score_distribution(
    scores: np.ndarray, threshold: float, path: str, router: str = "evaluator"
) -> str:
    """Histogram of routing scores, exited (>= threshold) and routed images in two colours."""
    scores = np.asarray(scores, dtype=np.float64)
    finite = scores[np.isfinite(scores)]
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.linspace(finite.min(), finite.max(), 40) if len(finite) else 10
    ax.hist(
        finite[finite >= threshold],
        bins=bins,
        color="tab:green",
        alpha=0.7,
        label="exited at the saver",
    )
    ax.hist(
        finite[finite < threshold],
        bins=bins,
        color="tab:purple",
        alpha=0.7,
        label="routed to the base",
    )
    if math.isfinite(threshold):
        ax.axvline(threshold, color="black", ls="--", label=f"threshold {threshold:.3g}")
    ax.set_xlabel(f"{router} score")
    ax.set_ylabel("images")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def example_images(scores: np.ndarray, threshold: float, per_path: int):
    """The examples shown: the top-scored exited images, the lowest-scored routed ones."""
    scores = np.asarray(scores, dtype=np.float64)
    exits = np.isfinite(scores) & (scores >= threshold)
    exited = [int(i) for i in np.argsort(-scores) if exits[i]][:per_path]
    routed = [int(i) for i in np.argsort(scores) if not exits[i]][:per_path]
    return exited, routed


def plot_examples(
    dataset_dicts: Sequence[dict],
    records: Sequence[dict],
    scores: np.ndarray,
    threshold: float,
    metadata,
    path: str,
    per_path: int = 4,
    score_thresh: float = 0.4,
) -> str:
    """
    A grid drawn with detectron2's Visualizer: top row, images that exited with the saver's boxes;
    bottom row, images routed to the base with the base's boxes; each titled with its score.
    """
    from detectron2.data.detection_utils import read_image
    from detectron2.structures import Boxes, BoxMode, Instances
    from detectron2.utils.visualizer import Visualizer

    exited, routed = example_images(scores, threshold, per_path)
    to_contiguous = metadata.get("thing_dataset_id_to_contiguous_id", None) or {}
    fig, axes = plt.subplots(2, per_path, figsize=(3.2 * per_path, 7))
    rows = [(exited, "saver", "exited"), (routed, "base", "routed")]
    for row, (ids, source, label) in enumerate(rows):
        for col in range(per_path):
            ax = axes[row, col]
            ax.axis("off")
            if col >= len(ids):
                continue
            i = ids[col]
            d = dataset_dicts[records[i]["index"]]
            image = read_image(d["file_name"], format="RGB")
            dets = records[i][source]
            keep = dets["scores"] >= score_thresh
            inst = Instances(image.shape[:2])
            xywh = np.asarray(dets["boxes"][keep], dtype=np.float32).reshape(-1, 4)
            inst.pred_boxes = Boxes(BoxMode.convert(xywh, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS))
            inst.scores = dets["scores"][keep]
            classes = [to_contiguous.get(int(c), int(c)) for c in dets["category_ids"][keep]]
            inst.pred_classes = np.array(classes, dtype=np.int64)
            visualizer = Visualizer(image, metadata=metadata, scale=1.5)
            drawn = visualizer.draw_instance_predictions(inst).get_image()
            ax.imshow(drawn)
            ax.set_title(f"{label} ({source} boxes)\nscore {scores[i]:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
