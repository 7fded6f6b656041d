"""The built-in dataset: generated scenes of shapes, where the class is the shape, never the colour.

Written once to disk, deterministic by seed, in two layouts over the same images:
- ``png``: ``<root>/<split>/images/NNNNN.png`` and ``<root>/<split>/masks/NNNNN.png`` (class ids, 0 = background);
- ``coco``: ``<root>/annotations/instances_<split>.json`` (file_name ``images/NNNNN.png`` under ``<root>/<split>/``),
  one RLE-encoded annotation per visible shape instance.
Classes: 0 background, 1 circle, 2 square, 3 triangle, 4 star. Colours, sizes, rotations, positions and
overlaps are random; shapes hidden down to fewer than 16 visible pixels are ignore_index (255) in the masks and
``iscrowd`` in COCO. The background is a random colour gradient with noise and stray lines.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from .datamodule import SegmentationDataModule

log = logging.getLogger(__name__)

SHAPE_CLASSES = ["background", "circle", "square", "triangle", "star"]
MIN_VISIBLE = 16  # pixels; smaller visible fragments are ignore_index in masks and iscrowd in COCO
IGNORE = 255


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    if kind == "square":
        n, radii = 4, [r] * 4
    elif kind == "triangle":
        n, radii = 3, [r * 1.2] * 3
    else:  # star
        n, radii = 10, [r * (1.0 if i % 2 == 0 else 0.45) for i in range(10)]
    t = angle + np.arange(n) * 2 * np.pi / n
    pts = np.stack([cx + np.asarray(radii) * np.cos(t), cy + np.asarray(radii) * np.sin(t)], axis=1)
    return np.round(pts).astype(np.int32)


def render_scene(rng: np.random.Generator, size: int, max_shapes: int = 4, min_shapes: int = 1,
                 radius: tuple[float, float] = (0.08, 0.2)):
    """One image (uint8 RGB), its class-id mask, and the visible instances as (class, bool mask, crowd) triples:
    ``min_shapes``..``max_shapes`` shapes of radius ``radius`` (fractions of ``size``), later ones on top."""
    h = w = size
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, w)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, h)[:, None, None]
    img = (c0 * (1 - t) + c1 * t) * np.ones((h, w, 3))
    img = np.clip(img + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
    for _ in range(rng.integers(0, 3)):  # distractor lines (background)
        p1, p2 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        cv2.line(img, tuple(int(v) for v in p1), tuple(int(v) for v in p2),
                 tuple(int(v) for v in rng.integers(0, 256, 3)), int(rng.integers(1, 3)))
    mask = np.zeros((h, w), np.uint8)
    inst_ids = np.zeros((h, w), np.int32)
    classes = []
    for k in range(int(rng.integers(min_shapes, max_shapes + 1))):
        cls = int(rng.integers(1, len(SHAPE_CLASSES)))
        r = float(rng.uniform(*radius) * size)
        cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        layer = np.zeros((h, w), np.uint8)
        if cls == 1:
            cv2.circle(layer, (int(round(cx)), int(round(cy))), int(round(r)), 1, -1, lineType=cv2.LINE_8)
        else:
            cv2.fillPoly(layer, [_polygon(SHAPE_CLASSES[cls], cx, cy, r, float(rng.uniform(0, 2 * np.pi)))], 1)
        on = layer.astype(bool)
        img[on] = color
        mask[on] = cls
        inst_ids[on] = k + 1
        classes.append(cls)
    instances = []
    visible = np.bincount(inst_ids.ravel(), minlength=len(classes) + 1)
    for k, c in enumerate(classes):
        if not visible[k + 1]:
            continue
        m = inst_ids == k + 1
        crowd = int(m.sum()) < MIN_VISIBLE  # an almost hidden fragment: ambiguous, so ignored, not background
        if crowd:
            mask[m] = IGNORE
        instances.append((c, m, crowd))
    return img, mask, instances


def generate_shapes(root: str | Path, num_train: int = 800, num_val: int = 160, image_size: int = 128,
                    seed: int = 0, max_shapes: int = 4, min_shapes: int = 1,
                    radius: tuple[float, float] = (0.08, 0.2)) -> Path:
    """Write the dataset under ``root`` unless an identical one is already there; return ``root``.

    ``min_shapes``/``max_shapes``/``radius`` (fractions of ``image_size``) set how crowded the scenes are: the
    default 1-4 shapes of 8-20%; the dense mode (``dataset=shapes_dense``) 150-400 shapes of 1.2-3% radius at 256 px
    (6-15 px across), touching and overlapping, as nuclei in histology tiles or cars in aerial images."""
    root = Path(root)
    radius = (float(radius[0]), float(radius[1]))
    if not (min_shapes >= 1 and max_shapes >= min_shapes and 0 < radius[0] <= radius[1] < 0.5):
        raise ValueError(f"generate_shapes: need 1 <= min_shapes <= max_shapes and 0 < radius[0] <= radius[1] < 0.5,"
                         f" got min_shapes={min_shapes}, max_shapes={max_shapes}, radius={radius}")
    params = dict(num_train=num_train, num_val=num_val, image_size=image_size, seed=seed, max_shapes=max_shapes,
                  version=2)
    if (min_shapes, radius) != (1, (0.08, 0.2)):  # the default keeps its stamp: no regeneration of existing data
        params.update(min_shapes=min_shapes, radius=list(radius))
    stamp = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    marker = root / ".complete"
    if marker.is_file() and marker.read_text().strip() == stamp:
        return root
    log.info("generating shapes dataset in %s (%s)", root, params)
    for old in (root / "train", root / "val", root / "annotations"):  # a different earlier dataset: no stale files
        if old.is_dir():
            shutil.rmtree(old)
    marker.unlink(missing_ok=True)
    categories = [{"id": i, "name": n, "supercategory": "shape"} for i, n in enumerate(SHAPE_CLASSES) if i > 0]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, n, split_seed in (("train", num_train, seed), ("val", num_val, seed + 1_000_003)):
        rng = np.random.default_rng(split_seed)
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(n):
            img, mask, instances = render_scene(rng, image_size, max_shapes, min_shapes, radius)
            name = f"{i:05d}.png"
            cv2.imwrite(str(root / split / "images" / name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(root / split / "masks" / name), mask)
            images.append({"id": i + 1, "file_name": f"images/{name}", "height": image_size, "width": image_size})
            for cls, m, crowd in instances:
                rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                x, y, bw, bh = (float(v) for v in mask_utils.toBbox(rle))
                rle["counts"] = rle["counts"].decode("ascii")
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": cls,
                                    "segmentation": rle, "area": float(m.sum()), "bbox": [x, y, bw, bh],
                                    "iscrowd": int(crowd)})
        with open(root / "annotations" / f"instances_{split}.json", "w") as f:
            json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    marker.write_text(stamp)
    return root


class ShapesDataModule(SegmentationDataModule):
    """``SegmentationDataModule`` over the generated shapes (``png`` layout), generating them on first use.

    Args: as ``SegmentationDataModule``, plus ``num_train``, ``num_val``, ``source_size`` (generated image size)
    and ``seed`` for the generator.
    """

    def __init__(self, data_dir: str | Path, num_train: int = 800, num_val: int = 160, source_size: int = 128,
                 seed: int = 0, image_size: int = 128, **kwargs):
        kwargs.setdefault("num_classes", len(SHAPE_CLASSES))
        super().__init__(data_dir=data_dir, image_size=image_size, **kwargs)
        self.gen_kwargs = dict(num_train=num_train, num_val=num_val, image_size=source_size, seed=seed)
        self.class_names = list(SHAPE_CLASSES)

    def prepare_data(self):
        generate_shapes(self.data_dir, **self.gen_kwargs)

    def setup(self, stage: str | None = None):
        generate_shapes(self.data_dir, **self.gen_kwargs)  # no-op when already there (also covers no prepare_data)
        super().setup(stage)
        self.class_names = list(SHAPE_CLASSES)
