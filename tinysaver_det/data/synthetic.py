"""
Procedural COCO-format detection dataset: the embedded default for training and testing TinySaver
on a CPU in minutes.

TinySaver only saves compute where some images are easy (the saver is already right) and others
are hard (only the base is), so every image draws a continuous difficulty ``d`` in [0, 1] and every
knob of the image is interpolated between an "easy" and a "hard" end by ``d``:

* easy (d ~ 0): 1-3 large, high-contrast objects on a flat or smooth background, no noise;
* hard (d ~ 1): 8-20 small, low-contrast, partly overlapping objects among unannotated clutter,
  on a textured background, with gaussian noise and often blur.

Six categories whose identity depends on shape only (colours and fill textures are random):
circle, ring (hollow circle), square (near axis-aligned), diamond (square turned ~45 degrees),
triangle and cross.

Output of :func:`generate_split` for split ``s`` under a data root::

    <root>/synthetic/<s>/<image_id:06d>.jpg
    <root>/synthetic/annotations/instances_<s>.json

Annotation ``bbox`` is the tight XYWH box of the object's *visible* pixels (after occlusion by
later objects and clutter, clipped to the image); ``area`` is the visible pixel count (COCO's
convention: mask area, not box area), which also decides COCO's small/medium/large buckets.
Each image entry carries its ``difficulty``; ``info`` records the generating spec, so a finished
split with the same spec is reused instead of regenerated.
"""

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from ..utils.atomic import atomic_write_bytes

__all__ = [
    "CATEGORIES",
    "SyntheticSpec",
    "PRESETS",
    "SplitDef",
    "SYNTHETIC_SPLITS",
    "split_spec",
    "split_paths",
    "render_image",
    "build_coco_dict",
    "generate_split",
    "prepare_all",
]

# Bump when the drawing code changes, so stale generated splits are not silently reused.
GENERATOR_VERSION = 1

# Category names, COCO ids 1..len in this order.
CATEGORIES: Tuple[str, ...] = ("circle", "ring", "square", "diamond", "triangle", "cross")

BACKGROUND_STYLES = ("flat", "gradient", "texture", "stripes", "noise")
# Backgrounds used for easy images when the spec allows them ("plain or smooth").
_SMOOTH_BACKGROUNDS = ("flat", "gradient")

Range = Tuple[float, float]


@dataclass(frozen=True)
class SyntheticSpec:
    """
    Every knob of the generator. Pairs named ``*_easy`` / ``*_hard`` are the (low, high) ranges at
    difficulty 0 and 1; an image of difficulty ``d`` samples from the linear interpolation of both.
    """

    num_images: int = 1200
    seed: int = 0
    # Image sides (width and height drawn independently), pixels.
    min_size: int = 160
    max_size: int = 224
    # Difficulty mixture: d ~ U(0, easy_max) with prob easy_fraction, U(hard_min, 1) with prob
    # hard_fraction, else U(easy_max, hard_min) ("medium"). Piecewise uniform, so quality varies
    # smoothly while the mix of easy and hard images stays controlled.
    easy_fraction: float = 0.4
    hard_fraction: float = 0.3
    easy_max: float = 0.25
    hard_min: float = 0.75
    # Number of annotated objects drawn (before occlusion drops some).
    num_objects_easy: Tuple[int, int] = (1, 3)
    num_objects_hard: Tuple[int, int] = (8, 20)
    # Object size as a fraction of the image's shorter side.
    object_size_easy: Range = (0.30, 0.50)
    object_size_hard: Range = (0.06, 0.13)
    # Object/background luminance difference, fraction of 255.
    contrast_easy: Range = (0.55, 0.90)
    contrast_hard: Range = (0.07, 0.20)
    # Largest share of a new object's box that may be covered by earlier boxes.
    max_overlap_easy: float = 0.0
    max_overlap_hard: float = 0.5
    # Gaussian pixel noise sigma (0..255 scale).
    noise_sigma_easy: Range = (0.0, 2.0)
    noise_sigma_hard: Range = (8.0, 20.0)
    # Probability of a gaussian blur at d = 1 (scales linearly with d); its sigma range in pixels.
    blur_prob: float = 0.6
    blur_sigma: Range = (0.5, 1.3)
    # Number of unannotated distractors (lines, arcs, blobs) at d = 0 and d = 1.
    clutter_easy: Tuple[int, int] = (0, 0)
    clutter_hard: Tuple[int, int] = (12, 30)
    # Amplitude of background texture/gradient variation at d = 0 and d = 1, fraction of 255.
    background_amplitude: Range = (0.15, 0.45)
    background_styles: Tuple[str, ...] = ("flat", "gradient", "texture")
    # Object fills; "solid" is a single colour, the others two colours of the same contrast sign.
    fill_styles: Tuple[str, ...] = ("solid", "stripes", "checker")
    # Annotation filters: an object is dropped if less than this share of it stays visible, or if
    # its visible box is narrower or shorter than min_box_size pixels.
    min_visible_fraction: float = 0.4
    min_box_size: int = 4
    jpeg_quality: int = 95

    def __post_init__(self):
        assert 16 <= self.min_size <= self.max_size, (self.min_size, self.max_size)
        assert 0.0 <= self.easy_fraction and 0.0 <= self.hard_fraction
        assert self.easy_fraction + self.hard_fraction <= 1.0
        assert 0.0 <= self.easy_max <= self.hard_min <= 1.0
        bad = set(self.background_styles) - set(BACKGROUND_STYLES)
        assert self.background_styles and not bad, f"unknown background styles {bad}"
        assert set(self.fill_styles) <= {"solid", "stripes", "checker"} and self.fill_styles

    def to_json(self) -> dict:
        """The spec as plain JSON types (tuples become lists), as recorded in ``info``."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


PRESETS: Dict[str, SyntheticSpec] = {
    "default": SyntheticSpec(),
    # Distribution shift: a harder mix, and backgrounds the default never shows.
    "shifted": SyntheticSpec(
        easy_fraction=0.15,
        hard_fraction=0.5,
        background_styles=("stripes", "noise"),
        noise_sigma_easy=(2.0, 6.0),
        noise_sigma_hard=(10.0, 24.0),
        blur_prob=0.8,
    ),
}


class SplitDef(NamedTuple):
    """One synthetic split: which preset, how many images at scale 1, and its seed."""

    preset: str
    num_images: int
    seed: int


# The one place splits are defined; dataset names are ``synthetic_<split>``.
SYNTHETIC_SPLITS: Dict[str, SplitDef] = {
    "train": SplitDef("default", 1200, 0),  # trains the saver and the base
    # Trains the evaluator: images the detectors never saw, so its targets are the detectors'
    # accuracy on new images, not on images they have fitted.
    "evaluator": SplitDef("default", 2000, 5),
    "calib": SplitDef("default", 1500, 1),  # thresholds are chosen here
    "val": SplitDef("default", 300, 2),  # the detectors' validation split
    "test": SplitDef("default", 1500, 3),  # held out: never used for training or choosing
    "shifted": SplitDef("shifted", 600, 4),
}

# Smallest split size when generating at a reduced scale, so quick runs still have some images.
MIN_SCALED_IMAGES = 8


def split_spec(split: str, scale: float = 1.0) -> SyntheticSpec:
    """The spec of a split in :data:`SYNTHETIC_SPLITS`, its image count multiplied by ``scale``."""
    d = SYNTHETIC_SPLITS[split]
    n = d.num_images if scale == 1.0 else max(MIN_SCALED_IMAGES, int(round(d.num_images * scale)))
    return dataclasses.replace(PRESETS[d.preset], num_images=n, seed=d.seed)


def split_paths(root: str, split: str) -> Tuple[str, str]:
    """(json file, image folder) of a synthetic split under the data root."""
    base = os.path.join(root, "synthetic")
    return os.path.join(base, "annotations", f"instances_{split}.json"), os.path.join(base, split)


# ---------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------


def _lerp(pair: Sequence[float], d: float) -> float:
    return pair[0] + (pair[1] - pair[0]) * d


def _lerp_range(easy: Sequence[float], hard: Sequence[float], d: float) -> Tuple[float, float]:
    return _lerp((easy[0], hard[0]), d), _lerp((easy[1], hard[1]), d)


def _luma(color: np.ndarray) -> float:
    # BGR order, as cv2 writes it.
    return float(0.114 * color[0] + 0.587 * color[1] + 0.299 * color[2])


def _sample_difficulty(rng: np.random.Generator, spec: SyntheticSpec) -> float:
    u = rng.random()
    if u < spec.easy_fraction:
        lo, hi = 0.0, spec.easy_max
    elif u < spec.easy_fraction + spec.hard_fraction:
        lo, hi = spec.hard_min, 1.0
    else:
        lo, hi = spec.easy_max, spec.hard_min
    return float(rng.uniform(lo, hi))


def _smooth_field(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid upsampled smoothly."""
    grid = rng.uniform(-1.0, 1.0, size=(cells, cells)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC).clip(-1.0, 1.0)


def _background(rng, spec: SyntheticSpec, d: float, h: int, w: int) -> np.ndarray:
    """Float32 HxWx3 background. Easy images prefer flat/gradient ones when the spec allows them."""
    styles = spec.background_styles
    smooth = tuple(s for s in styles if s in _SMOOTH_BACKGROUNDS)
    if d < spec.easy_max and smooth:
        styles = smooth
    style = styles[rng.integers(len(styles))]
    amp = 255.0 * _lerp(spec.background_amplitude, d)
    base = rng.uniform(40, 215, size=3).astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    img[:] = base
    if style == "flat":
        return img
    # Broadcast row/column coordinates instead of full grids (faster, same values).
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    if style == "gradient":
        a = rng.uniform(0, 2 * math.pi)
        t = (xs * math.cos(a) + ys * math.sin(a)) / max(h, w)  # about [-1, 1]
        direction = rng.uniform(-1, 1, size=3).astype(np.float32)
        return img + t[..., None] * direction * amp
    if style == "texture":
        field = _smooth_field(rng, h, w, int(rng.integers(4, 9)))
        fine = _smooth_field(rng, h, w, int(rng.integers(16, 33)))
        direction = rng.uniform(-1, 1, size=3).astype(np.float32)
        return img + (0.7 * field + 0.3 * fine)[..., None] * direction * amp
    if style == "stripes":
        a = rng.uniform(0, math.pi)
        period = rng.uniform(6, 20)
        t = np.sin(2 * math.pi * (xs * math.cos(a) + ys * math.sin(a)) / period)
        direction = rng.uniform(-1, 1, size=3).astype(np.float32)
        return img + t[..., None] * direction * amp
    # "noise": high-frequency colour noise, lightly smoothed.
    noise = rng.uniform(-1, 1, size=(h, w, 3)).astype(np.float32)
    return img + cv2.GaussianBlur(noise, (0, 0), 0.8) * amp * 1.5


def _shape_mask(rng, category: str, size: float, cx: float, cy: float):
    """
    Binary mask of one shape in its own (unclipped) box. Returns (mask uint8, x0, y0) where
    (x0, y0) is the box's top-left pixel in image coordinates (may be negative).
    """
    r = size / 2.0
    half = int(math.ceil(r)) + 2
    x0, y0 = int(math.floor(cx)) - half, int(math.floor(cy)) - half
    mask = np.zeros((2 * half + 1, 2 * half + 1), np.uint8)
    c = np.array([cx - x0, cy - y0])
    shift = 4  # sub-pixel precision for cv2 drawing
    sc = float(1 << shift)

    def poly(points):
        cv2.fillPoly(mask, [np.round(points * sc).astype(np.int32)], 1, cv2.LINE_8, shift)

    def rot(angle):
        return np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])

    if category in ("circle", "ring"):
        center = tuple(int(v) for v in np.round(c * sc))
        cv2.circle(mask, center, int(round(r * sc)), 1, -1, cv2.LINE_8, shift)
        if category == "ring":
            inner = r * rng.uniform(0.5, 0.65)
            cv2.circle(mask, center, int(round(inner * sc)), 0, -1, cv2.LINE_8, shift)
    elif category in ("square", "diamond"):
        # Square and diamond differ only by orientation, kept >= 20 degrees apart.
        angle = math.radians(rng.uniform(-12, 12) + (45.0 if category == "diamond" else 0.0))
        s = 0.8 * r  # half side
        corners = np.array([[-s, -s], [s, -s], [s, s], [-s, s]])
        poly(corners @ rot(angle).T + c)
    elif category == "triangle":
        angle = rng.uniform(0, 2 * math.pi)
        corner_angles = [angle + k * 2 * math.pi / 3 for k in range(3)]
        pts = np.array([[math.cos(a), math.sin(a)] for a in corner_angles]) * r
        poly(pts + c)
    elif category == "cross":
        arm = r * rng.uniform(0.28, 0.38)  # half-width of each bar
        angle = math.radians(rng.uniform(-20, 20))
        for bar in (
            np.array([[-r, -arm], [r, -arm], [r, arm], [-r, arm]]),
            np.array([[-arm, -r], [arm, -r], [arm, r], [-arm, r]]),
        ):
            poly(bar @ rot(angle).T + c)
    else:
        raise ValueError(f"unknown category {category!r}")
    return mask, x0, y0


def _object_colors(rng, spec: SyntheticSpec, bg_color: np.ndarray, contrast: float):
    """A random colour whose luminance differs from the local background by ``contrast``."""
    bg_l = _luma(bg_color)
    delta = contrast * 255.0
    # Prefer the side of the background with room for the full contrast.
    sign = 1.0 if rng.random() < 0.5 else -1.0
    if not 0 <= bg_l + sign * delta <= 255:
        sign = -sign
    target = np.clip(bg_l + sign * delta, 0, 255)
    color = rng.uniform(0, 255, size=3)
    # Keep the hue random but pull its chroma toward the background when contrast is low, so a
    # hard object does not stand out by colour alone.
    color = bg_color + (color - bg_color) * min(1.0, 0.1 + 1.2 * contrast)
    color = np.clip(color + (target - _luma(color)), 0, 255)
    # Second fill colour: halfway back to the background, same side, so the silhouette stays clear.
    second = np.clip(color + (bg_color - color) * rng.uniform(0.3, 0.5), 0, 255)
    return color.astype(np.float32), second.astype(np.float32)


def _fill(rng, style: str, shape: Tuple[int, int], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """HxWx3 fill pattern for an object's box."""
    h, w = shape
    if style == "solid":
        out = np.empty((h, w, 3), np.float32)
        out[:] = a
        return out
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    period = rng.uniform(3, 7)
    if style == "stripes":
        ang = rng.uniform(0, math.pi)
        sel = ((xs * math.cos(ang) + ys * math.sin(ang)) // period) % 2 == 0
    else:  # checker
        sel = ((xs // period) + (ys // period)) % 2 == 0
    return np.where(sel[..., None], a, b)


def _place(
    rng,
    size: float,
    w: int,
    h: int,
    boxes: List[Tuple[float, float, float, float]],
    max_overlap: float,
    tries: int = 20,
):
    """A centre for a new object whose box overlaps earlier boxes at most ``max_overlap``."""
    for _ in range(tries):
        # Objects may reach slightly past the border (they are clipped and re-checked later).
        margin = size * 0.3
        cx = rng.uniform(margin, max(margin + 1, w - margin))
        cy = rng.uniform(margin, max(margin + 1, h - margin))
        bx = (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2)
        worst = 0.0
        for ex in boxes:
            iw = min(bx[2], ex[2]) - max(bx[0], ex[0])
            ih = min(bx[3], ex[3]) - max(bx[1], ex[1])
            if iw > 0 and ih > 0:
                worst = max(worst, iw * ih / (size * size))
        if worst <= max_overlap + 1e-9:
            boxes.append(bx)
            return cx, cy
    return None


def _draw_clutter(rng, img: np.ndarray, owner: Optional[np.ndarray], count: int) -> None:
    """Unannotated distractors: lines, arcs and scribbles. Marks covered pixels in ``owner``."""
    h, w = img.shape[:2]
    layer = np.zeros((h, w), np.uint8) if owner is not None else None
    for _ in range(count):
        color = tuple(float(v) for v in rng.uniform(0, 255, size=3))
        kind = int(rng.integers(3))
        thick = int(rng.integers(1, 3))
        # The same primitive is drawn on the image and on the occlusion layer.
        targets = [(img, color)] + ([(layer, 1)] if layer is not None else [])
        if kind == 0:
            p1 = (int(rng.integers(w)), int(rng.integers(h)))
            p2 = (int(rng.integers(w)), int(rng.integers(h)))
            for t, c in targets:
                cv2.line(t, p1, p2, c, thick)
        elif kind == 1:
            center = (int(rng.integers(w)), int(rng.integers(h)))
            axes = (int(rng.integers(4, max(5, w // 4))), int(rng.integers(4, max(5, h // 4))))
            tilt, start = float(rng.uniform(0, 180)), float(rng.uniform(0, 360))
            end = start + float(rng.uniform(40, 200))  # an open arc, never a full ellipse
            for t, c in targets:
                cv2.ellipse(t, center, axes, tilt, start, end, c, thick)
        else:
            pts = np.cumsum(rng.normal(0, 3.0, size=(int(rng.integers(4, 9)), 2)), axis=0)
            pts = (pts + (rng.integers(w), rng.integers(h))).astype(np.int32)
            for t, c in targets:
                cv2.polylines(t, [pts], False, c, thick + 1)
    if owner is not None:
        owner[layer.astype(bool)] = -1


def render_image(spec: SyntheticSpec, index: int):
    """
    Draw image ``index`` of a spec. Deterministic in (spec.seed, index) alone, so images can be
    generated in any order, in parallel, or resumed.

    Returns:
        (BGR uint8 image, difficulty, list of (category_id, [x, y, w, h], visible pixel area))
    """
    rng = np.random.default_rng([spec.seed, index, GENERATOR_VERSION])
    d = _sample_difficulty(rng, spec)
    h = int(rng.integers(spec.min_size, spec.max_size + 1))
    w = int(rng.integers(spec.min_size, spec.max_size + 1))
    img = _background(rng, spec, d, h, w)
    owner = np.full((h, w), -1, np.int16)  # index of the object owning each pixel, -1 = none

    n_clutter = int(round(rng.uniform(*_lerp_range(spec.clutter_easy, spec.clutter_hard, d))))
    n_before = int(rng.integers(0, n_clutter + 1))
    _draw_clutter(rng, img, None, n_before)  # behind the objects

    lo, hi = _lerp_range(spec.num_objects_easy, spec.num_objects_hard, d)
    n_obj = int(rng.integers(int(round(lo)), int(round(hi)) + 1))
    size_range = _lerp_range(spec.object_size_easy, spec.object_size_hard, d)
    contrast_range = _lerp_range(spec.contrast_easy, spec.contrast_hard, d)
    max_overlap = _lerp((spec.max_overlap_easy, spec.max_overlap_hard), d)
    short = min(h, w)

    objects = []  # (category index, full unclipped area, clipped box)
    boxes: List[Tuple[float, float, float, float]] = []
    for _ in range(n_obj):
        cat = int(rng.integers(len(CATEGORIES)))
        size = max(6.0, rng.uniform(*size_range) * short)
        pos = _place(rng, size, w, h, boxes, max_overlap)
        if pos is None:
            continue  # no room left at this overlap level
        mask, x0, y0 = _shape_mask(rng, CATEGORIES[cat], size, *pos)
        # Clip the shape's box to the image.
        mh, mw = mask.shape
        ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + mw, w), min(y0 + mh, h)
        if ix1 <= ix0 or iy1 <= iy0:
            continue
        sub = mask[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0].astype(bool)
        region = img[iy0:iy1, ix0:ix1]
        bg_color = region.reshape(-1, 3).mean(axis=0)
        a, b = _object_colors(rng, spec, bg_color, rng.uniform(*contrast_range))
        style = spec.fill_styles[rng.integers(len(spec.fill_styles))]
        fill = _fill(rng, style, sub.shape, a, b)
        region[sub] = fill[sub]
        k = len(objects)
        owner[iy0:iy1, ix0:ix1][sub] = k
        objects.append((cat, int(mask.sum()), (ix0, iy0, ix1, iy1)))

    _draw_clutter(rng, img, owner, n_clutter - n_before)  # in front: occludes a little

    sigma = rng.uniform(*_lerp_range(spec.noise_sigma_easy, spec.noise_sigma_hard, d))
    if sigma > 0.5:
        # cv2's per-thread RNG, seeded from this image's stream: 3x faster than numpy's normal.
        cv2.setRNGSeed(int(rng.integers(2**31)))
        noise = np.empty(img.shape, np.float32)
        cv2.randn(noise, 0.0, float(sigma))
        img += noise
    if rng.random() < spec.blur_prob * d:
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(*spec.blur_sigma)))
    out = np.clip(img, 0, 255, out=img).astype(np.uint8)
    return out, d, _visible_annotations(owner, objects, spec)


def _visible_annotations(owner: np.ndarray, objects, spec: SyntheticSpec):
    """Tight boxes of the visible pixels of each object; drops mostly hidden or tiny ones."""
    anns = []
    flat = owner.ravel()
    counts = np.bincount(flat[flat >= 0], minlength=len(objects)) if len(objects) else []
    for k, (cat, full_area, (bx0, by0, bx1, by1)) in enumerate(objects):
        visible = int(counts[k])
        if visible == 0 or visible < spec.min_visible_fraction * full_area:
            continue
        # Visible pixels can only lie inside the object's own drawn box.
        ys, xs = np.nonzero(owner[by0:by1, bx0:bx1] == k)
        x0, x1 = bx0 + int(xs.min()), bx0 + int(xs.max()) + 1
        y0, y1 = by0 + int(ys.min()), by0 + int(ys.max()) + 1
        if x1 - x0 < spec.min_box_size or y1 - y0 < spec.min_box_size:
            continue
        anns.append((cat + 1, [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], visible))
    return anns


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def build_coco_dict(spec: SyntheticSpec, split: str, images: list, annotations: list) -> dict:
    """The COCO json dict of a split, with the spec recorded in ``info``."""
    return {
        "info": {
            "description": f"tinysaver_det synthetic split '{split}'",
            "generator_version": GENERATOR_VERSION,
            "spec": spec.to_json(),
            "area": "visible pixel count of the object",
        },
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CATEGORIES)
        ],
    }


def _is_complete(json_file: str, image_dir: str, spec: SyntheticSpec) -> bool:
    """Whether a finished split with this exact spec (and all its images) is already on disk."""
    if not os.path.isfile(json_file):
        return False
    try:
        with open(json_file) as f:
            data = json.load(f)
        info, images = data.get("info", {}), data["images"]
    except (OSError, ValueError, KeyError):
        return False
    if info.get("spec") != spec.to_json() or info.get("generator_version") != GENERATOR_VERSION:
        return False
    return all(os.path.isfile(os.path.join(image_dir, im["file_name"])) for im in images)


def generate_split(
    root: str,
    split: str,
    spec: Optional[SyntheticSpec] = None,
    num_images: Optional[int] = None,
    progress: bool = True,
) -> str:
    """
    Generate one split under ``root`` (see module docstring for the layout) and return its json.

    Args:
        root: data root (the folder holding ``synthetic/``).
        split: split name; also the image folder and json suffix.
        spec: generator spec; defaults to the split's entry in :data:`SYNTHETIC_SPLITS`.
        num_images: overrides ``spec.num_images``.
        progress: show a tqdm bar.

    A json whose recorded spec matches (with all its images present) is reused untouched. Images
    are written first, each atomically; the json last, atomically, so its presence marks a
    complete split and an interrupted run simply regenerates.
    """
    if spec is None:
        spec = split_spec(split)
    if num_images is not None:
        spec = dataclasses.replace(spec, num_images=int(num_images))
    json_file, image_dir = split_paths(root, split)
    if _is_complete(json_file, image_dir, spec):
        return json_file
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(os.path.dirname(json_file), exist_ok=True)

    images, annotations = [], []
    params = [int(cv2.IMWRITE_JPEG_QUALITY), spec.jpeg_quality]
    for index in tqdm(
        range(spec.num_images), desc=f"synthetic_{split}", disable=not progress, leave=False
    ):
        img, d, anns = render_image(spec, index)
        image_id = index + 1  # COCO ids start at 1
        file_name = f"{image_id:06d}.jpg"
        ok, buf = cv2.imencode(".jpg", img, params)
        assert ok, "JPEG encoding failed"
        atomic_write_bytes(buf.tobytes(), os.path.join(image_dir, file_name))
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "height": int(img.shape[0]),
                "width": int(img.shape[1]),
                "difficulty": round(d, 6),
            }
        )
        for cat, bbox, area in anns:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": bbox,
                    "area": float(area),
                    "iscrowd": 0,
                }
            )
    _remove_stale_images(image_dir, {im["file_name"] for im in images})
    data = build_coco_dict(spec, split, images, annotations)
    atomic_write_bytes(json.dumps(data, sort_keys=True).encode("utf-8"), json_file)
    return json_file


def _remove_stale_images(image_dir: str, keep: set) -> None:
    """
    Drop images of an earlier, larger generation of this split, and the temporary files of an
    interrupted one (".tmp-*000001.jpg" from utils/atomic.py; "*.jpg.tmp<pid>" from older versions).
    """
    for name in os.listdir(image_dir):
        if name not in keep and (name.endswith(".jpg") or ".jpg.tmp" in name):
            os.remove(os.path.join(image_dir, name))


def prepare_all(
    root: str, scale: float = 1.0, splits: Optional[Sequence[str]] = None, progress: bool = True
) -> Dict[str, str]:
    """Generate every split of :data:`SYNTHETIC_SPLITS` (or ``splits``); returns split -> json."""
    splits = list(SYNTHETIC_SPLITS) if splits is None else list(splits)
    unknown = set(splits) - set(SYNTHETIC_SPLITS)
    if unknown:
        raise KeyError(
            f"unknown synthetic splits {sorted(unknown)}; known: {list(SYNTHETIC_SPLITS)}"
        )
    return {s: generate_split(root, s, split_spec(s, scale), progress=progress) for s in splits}
