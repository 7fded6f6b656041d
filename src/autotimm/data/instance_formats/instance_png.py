"""Instance-id maps: one PNG per image, 0 = background, one value per instance.

Layout: ``<root>/<split>/<images_dir>/<stem>.<ext>`` + ``<root>/<split>/<masks_dir>/<stem><mask_suffix>``; or, when
``<root>/<split>.txt`` lists stems (one per line), ``<root>/<images_dir>/`` + ``<root>/<masks_dir>/`` (PennFudan:
``images_dir=PNGImages masks_dir=PedMasks mask_suffix=_mask.png``).

``encoding``:
- ``plain``: every non-zero value is one instance of one class (``class_names``, default ``["object"]``), as
  PennFudan's ``PedMasks``; an 8-bit map (a 16-bit one is an error naming the file: use ``cityscapes``);
- ``cityscapes``: Cityscapes' ``*_instanceIds.png`` convention: values >= 1000 are instances of class
  ``value // 1000`` (``class_ids`` lists the class ids in label order, default Cityscapes' eight instance classes),
  values below 1000 are regions without instances (background here); 8, 16 or 32-bit maps.
Instances do not overlap by construction, so they stay one map through augmentation (``base.Instances``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..formats.base import IMAGE_EXTS, DatasetLayoutError
from .base import Instances, InstanceSample, InstanceSplit, require_split_dir

CITYSCAPES_INSTANCE_CLASSES = {24: "person", 25: "rider", 26: "car", 27: "truck", 28: "bus", 31: "train",
                               32: "motorcycle", 33: "bicycle"}
ENCODINGS = ("plain", "cityscapes")


def read_map(path: Path, encoding: str) -> np.ndarray:
    with Image.open(path) as im:
        mode = im.mode
        if encoding == "plain" and mode not in ("L", "P", "1"):
            wide = mode in ("I", "I;16", "I;16B", "I;16L", "F")
            raise ValueError(f"instance map {path}: expected an 8-bit single-channel PNG for encoding 'plain', got "
                             f"mode {mode!r}" + (" (16/32-bit: use encoding 'cityscapes' for class * 1000 + id maps)"
                                                 if wide else ""))
        if encoding == "cityscapes" and mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
            raise ValueError(f"instance map {path}: expected a single-channel integer PNG, got mode {mode!r}")
        return np.asarray(im).astype(np.int64)


def load_split(root: Path, split: str, encoding: str = "plain", images_dir: str = "images",
               masks_dir: str = "instances", mask_suffix: str = ".png", class_names: list[str] | None = None,
               class_ids: list[int] | None = None) -> InstanceSplit:
    root = Path(root)
    if encoding not in ENCODINGS:
        raise ValueError(f"format='instance_png': encoding {encoding!r}; valid: {list(ENCODINGS)}")
    list_file = root / f"{split}.txt"
    if list_file.is_file():
        img_dir = require_split_dir(root / images_dir, f"the image folder {images_dir}/", "instance_png")
        mask_dir = require_split_dir(root / masks_dir, f"the instance-map folder {masks_dir}/", "instance_png")
        stems = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
        by_stem = {p.stem: p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS}
        missing = [s for s in stems if s not in by_stem]
        if missing:
            raise FileNotFoundError(f"format='instance_png': {list_file} lists {len(missing)} stem(s) with no image "
                                    f"in {img_dir}: {missing[:5]}")
        images = [by_stem[s] for s in stems]
    else:
        img_dir = require_split_dir(root / split / images_dir, f"the image folder {split}/{images_dir}/",
                                    "instance_png")
        mask_dir = require_split_dir(root / split / masks_dir, f"the instance-map folder {split}/{masks_dir}/",
                                     "instance_png")
        images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not images:
        raise DatasetLayoutError(f"format='instance_png': no images for split {split!r} in {img_dir}")
    samples = []
    for img in images:
        mask = mask_dir / f"{img.stem}{mask_suffix}"
        if not mask.is_file():
            raise FileNotFoundError(f"format='instance_png': image {img} has no instance map {mask}")
        samples.append(InstanceSample(image_path=img, image_id=img.stem, extra={"map": mask}))
    if encoding == "cityscapes":
        ids = list(class_ids) if class_ids else list(CITYSCAPES_INSTANCE_CLASSES)
        names = list(class_names) if class_names else [CITYSCAPES_INSTANCE_CLASSES.get(c, str(c)) for c in ids]
    else:
        ids, names = [1], list(class_names or ["object"])
        if len(names) != 1:
            raise ValueError(f"format='instance_png': encoding 'plain' maps hold one class; got class_names {names}")
    if len(names) != len(ids):
        raise ValueError(f"format='instance_png': {len(names)} class_names for {len(ids)} class_ids")
    lut = np.full(max(ids) + 1, -1, np.int64)
    lut[np.asarray(ids)] = np.arange(len(ids))

    def read_instances(sample: InstanceSample, h: int, w: int) -> Instances:
        path = sample.extra["map"]
        id_map = read_map(path, encoding)
        if id_map.shape != (h, w):
            raise ValueError(f"instance map {path}: {id_map.shape[1]}x{id_map.shape[0]} but its image is {w}x{h}")
        if encoding == "cityscapes":
            id_map = np.where(id_map >= 1000, id_map, 0)  # below 1000: regions without instances
        values = np.unique(id_map)
        values = values[values > 0]
        if encoding == "cityscapes":
            classes = values // 1000
            labels = lut[np.minimum(classes, len(lut) - 1)]
            labels[classes >= len(lut)] = -1
            if (labels < 0).any():
                unknown = sorted(set(classes[labels < 0].tolist()))
                raise ValueError(f"instance map {path}: class ids {unknown} (value // 1000) are not in class_ids "
                                 f"{ids}")
        else:
            labels = np.zeros(len(values), np.int64)
        return Instances(labels=labels, crowd=np.zeros(len(values), bool), id_map=id_map.astype(np.int32),
                         ids=values.astype(np.int32))

    return InstanceSplit(samples=samples, read_instances=read_instances, class_names=names, category_ids=ids)
