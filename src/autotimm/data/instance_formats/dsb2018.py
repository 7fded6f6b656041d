"""The 2018 Data Science Bowl layout: ``<root>/stage1_train/<id>/images/<id>.png`` and
``<root>/stage1_train/<id>/masks/*.png`` (one 8-bit PNG per nucleus, 255 inside, 0 outside, the image's size; the
masks of one image do not overlap). Splits: ``<root>/<split>.txt`` (one id per line) when present, else every folder
for ``split=train``. RGBA and grey images become RGB (the data module's reader). One class, ``nucleus``, unless a
``class_map`` gives each image's class (``{id: class name}``, or the path of a CSV with ``id,class`` rows); then
``class_names`` orders the classes (default: sorted).

Each image's masks are combined into one instance-id map (the compact form: ``base.Instances``), checked on the way
(a named error for a mask of another size than its image, an empty mask, masks that overlap, a non-binary or 16-bit
mask; the corrected stage 1 set still has 5 images of 564 whose masks share 1-2 pixels: ``overlaps=keep_first``
gives those pixels to the first mask, logged) and kept in memory (uint16). ``preload=True`` (the default) decodes
every image's masks at set-up, once, before the DataLoader workers start (they inherit the maps), so training never
waits on thousands of small PNGs (DSB2018's 464 training images: about a minute on one core); ``preload=False``
decodes each image when first read, once per worker. ``skip_bad=True`` leaves out the images with a bad mask,
counted and logged, instead of the named error.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from ..formats.base import DatasetLayoutError
from .base import Instances, InstanceSample, InstanceSplit, require_split_dir

log = logging.getLogger("autotimm")
FOLDER = "stage1_train"
OVERLAPS = ("error", "keep_first")


def _class_map(class_map) -> dict[str, str] | None:
    if class_map is None:
        return None
    if isinstance(class_map, (str, Path)):
        path = Path(class_map)
        if not path.is_file():
            raise FileNotFoundError(f"format='dsb2018': class_map {path} does not exist")
        rows = {}
        with path.open() as f:
            for n, row in enumerate(csv.reader(f), 1):
                if not row or (n == 1 and row[:2] == ["id", "class"]):
                    continue
                if len(row) != 2:
                    raise ValueError(f"format='dsb2018': {path} line {n}: expected 'id,class', got {row}")
                rows[row[0].strip()] = row[1].strip()
        return rows
    return {str(k): str(v) for k, v in dict(class_map).items()}


def read_id_map(folder: Path, image_size: tuple[int, int], overlaps: str = "error") -> tuple[np.ndarray, np.ndarray]:
    """Combine ``folder/*.png`` (one binary mask each) into an id map [H,W] (uint16; instance k = k, in file-name
    order) and the ids; errors name the file and what was expected. ``overlaps="keep_first"`` gives a pixel two
    masks claim to the first of them (in file-name order), logged with the count, instead of the error."""
    files = sorted(folder.glob("*.png"))
    h, w = image_size
    id_map = np.zeros((h, w), np.uint16 if len(files) < 65535 else np.int32)
    for k, path in enumerate(files, 1):
        with Image.open(path) as im:
            if im.mode not in ("L", "1", "P"):
                raise ValueError(f"mask {path}: expected an 8-bit single-channel PNG (0 outside, 255 inside), got "
                                 f"mode {im.mode!r}" + (" (16-bit)" if im.mode.startswith("I;16") or im.mode == "I"
                                                        else ""))
            m = np.asarray(im)
        if m.shape != (h, w):
            raise ValueError(f"mask {path}: {m.shape[1]}x{m.shape[0]} but its image is {w}x{h}")
        values = np.unique(m)
        if not set(values.tolist()) <= {0, 1, 255} or len(values) > 2:
            raise ValueError(f"mask {path}: expected a binary mask (0 and 255), got values {values[:8].tolist()}")
        inside = m > 0
        if not inside.any():
            raise ValueError(f"mask {path}: empty (no pixel inside); remove the file or fix the mask")
        taken = id_map[inside]
        if taken.any():
            other = files[int(taken[taken > 0][0]) - 1].name
            n = int((taken > 0).sum())
            if overlaps != "keep_first":
                raise ValueError(f"mask {path}: overlaps mask {other} in {n} pixel(s); the masks of one image must "
                                 f"not overlap (format_options.overlaps=keep_first gives such pixels to the first "
                                 f"mask)")
            log.warning("dsb2018: mask %s overlaps mask %s in %d pixel(s): given to the first (overlaps=keep_first)",
                        path, other, n)
            inside &= id_map == 0
        id_map[inside] = k
    return id_map, np.arange(1, len(files) + 1, dtype=id_map.dtype)


def load_split(root: Path, split: str, class_map=None, class_names: list[str] | None = None,
               skip_bad: bool = False, overlaps: str = "error", preload: bool = True) -> InstanceSplit:
    root = Path(root)
    if overlaps not in OVERLAPS:
        raise ValueError(f"format='dsb2018': overlaps {overlaps!r}; valid: {list(OVERLAPS)}")
    base = require_split_dir(root / FOLDER, f"the image folders {FOLDER}/<id>/", "dsb2018")
    list_file = root / f"{split}.txt"
    if list_file.is_file():
        ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
        missing = [i for i in ids if not (base / i).is_dir()]
        if missing:
            raise FileNotFoundError(f"format='dsb2018': {list_file} lists {len(missing)} id(s) without a folder in "
                                    f"{base}: {missing[:5]}")
    elif split == "train":
        ids = sorted(p.name for p in base.iterdir() if p.is_dir())
    else:
        raise DatasetLayoutError(f"format='dsb2018': no split {split!r}: {list_file} does not exist")
    if not ids:
        raise DatasetLayoutError(f"format='dsb2018': split {split!r} lists no images")
    samples = []
    for i in ids:
        image = base / i / "images" / f"{i}.png"
        if not image.is_file():
            raise FileNotFoundError(f"format='dsb2018': image {image} does not exist (id {i!r} of split {split!r})")
        if not (base / i / "masks").is_dir():
            raise FileNotFoundError(f"format='dsb2018': {base / i / 'masks'} does not exist (id {i!r})")
        samples.append(InstanceSample(image_path=image, image_id=i, extra={"masks": base / i / "masks"}))
    per_image = _class_map(class_map)
    if per_image is None:
        names = ["nucleus"]
    else:
        unlisted = [s.image_id for s in samples if s.image_id not in per_image]
        if unlisted:
            raise ValueError(f"format='dsb2018': class_map has no class for {len(unlisted)} image(s) of split "
                             f"{split!r}: {unlisted[:5]}")
        names = list(class_names) if class_names else sorted(set(per_image.values()))
        unknown = sorted(set(per_image[s.image_id] for s in samples) - set(names))
        if unknown:
            raise ValueError(f"format='dsb2018': class_map uses classes {unknown} missing from class_names {names}")
    label_of = {n: k for k, n in enumerate(names)}
    cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # per worker: each image's masks decoded once
    skipped: dict[str, str] = {}
    if skip_bad or preload:  # decode every image's masks now: DataLoader workers inherit the maps (fork)
        kept = []
        for sample in samples:
            with Image.open(sample.image_path) as im:
                w, h = im.size
            try:
                cache[sample.image_id] = read_id_map(sample.extra["masks"], (h, w), overlaps)
                kept.append(sample)
            except ValueError as e:
                if not skip_bad:
                    raise
                skipped[sample.image_id] = str(e)
                log.warning("dsb2018 split %r: skipped image %s (skip_bad=True): %s", split, sample.image_id, e)
        if skipped:
            log.warning("dsb2018 split %r: skipped %d of %d images with bad masks (skip_bad=True)", split,
                        len(skipped), len(samples))
        samples = kept

    def read_instances(sample: InstanceSample, h: int, w: int) -> Instances:
        key = sample.image_id
        if key not in cache:
            cache[key] = read_id_map(sample.extra["masks"], (h, w), overlaps)
        id_map, ids = cache[key]
        label = label_of[per_image[key]] if per_image is not None else 0
        return Instances(labels=np.full(len(ids), label, np.int64), crowd=np.zeros(len(ids), bool), id_map=id_map,
                         ids=ids)

    return InstanceSplit(samples=samples, read_instances=read_instances, class_names=names,
                         category_ids=list(range(len(names))), extra={"skipped": skipped})
