"""COCO for semantic segmentation: instance annotations rasterised with pycocotools into class-id masks.

Layouts: ``<root>/<split>2017/`` + ``<root>/annotations/instances_<split>2017.json``, or ``<root>/<split>/`` +
``<root>/annotations/instances_<split>.json``. ``file_name`` is resolved inside the image folder. Category ids map to
contiguous classes 1..K in id order (0 is background); crowd regions become ``ignore_index``. Larger objects are
painted first so smaller ones stay visible.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from .base import DatasetLayoutError, Sample, SplitData


def find_coco_split(root: Path, split: str) -> tuple[Path, Path]:
    tried = []
    for img_dir, ann in ((root / f"{split}2017", root / "annotations" / f"instances_{split}2017.json"),
                         (root / split, root / "annotations" / f"instances_{split}.json")):
        if img_dir.is_dir() and ann.is_file():
            return img_dir, ann
        tried.append(f"{img_dir}/ + {ann}")
    raise DatasetLayoutError(f"format='coco': no split {split!r} in {root}; looked for " + " or ".join(tried))


def resolve_inside(folder: Path, file_name: str, where: str) -> Path:
    path = (folder / file_name).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise ValueError(f"{where}: file_name {file_name!r} points outside the image folder {folder}")
    return path


def ann_to_mask(segm, h: int, w: int) -> np.ndarray:
    if isinstance(segm, list):  # polygons
        rles = mask_utils.frPyObjects(segm, h, w)
        rle = mask_utils.merge(rles)
    elif isinstance(segm.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segm, h, w)
    else:  # compressed RLE
        rle = segm
    return mask_utils.decode(rle).astype(bool)


def load_split(root: Path, split: str, ignore_index: int = 255) -> SplitData:
    img_dir, ann_file = find_coco_split(root, split)
    coco = COCO(str(ann_file))
    cat_ids = sorted(coco.getCatIds())
    mapping = {cid: i + 1 for i, cid in enumerate(cat_ids)}
    names = ["background"] + [coco.cats[c]["name"] for c in cat_ids]
    samples = []
    for img_id in sorted(coco.getImgIds()):
        info = coco.imgs[img_id]
        path = resolve_inside(img_dir, info["file_name"], f"{ann_file} image id {img_id}")
        if not path.is_file():
            raise FileNotFoundError(f"{ann_file}: image id {img_id} file {path} does not exist")
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id, iscrowd=None))
        samples.append(Sample(image_path=path, image_id=img_id,
                              extra={"anns": anns, "height": info["height"], "width": info["width"],
                                     "ann_file": str(ann_file)}))

    def read_mask(sample: Sample) -> np.ndarray:
        h, w = sample.extra["height"], sample.extra["width"]
        # raw values are category ids; crowd pixels get -1 and become ignore_index after mapping
        raw = np.zeros((h, w), dtype=np.int64)
        anns = sorted(sample.extra["anns"], key=lambda a: -float(a.get("area", 0)))
        crowd = np.zeros((h, w), dtype=bool)
        for a in anns:
            m = ann_to_mask(a["segmentation"], h, w)
            if a.get("iscrowd", 0):
                crowd |= m
            else:
                raw[m] = a["category_id"]
        raw[crowd] = -1
        return raw

    return SplitData(samples=samples, read_mask=read_mask, mapping={0: 0, -1: ignore_index, **mapping},
                     strict_mapping=True, class_names=names)
