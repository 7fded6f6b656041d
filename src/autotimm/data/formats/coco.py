"""COCO for semantic segmentation: instance annotations rasterised with pycocotools into class-id masks.

Layouts: ``<root>/<split>2017/`` + ``<root>/annotations/instances_<split>2017.json``, or ``<root>/<split>/`` +
``<root>/annotations/instances_<split>.json``. ``file_name`` is resolved inside the image folder. Category ids map to
contiguous classes 1..K in id order (0 is background); crowd regions become ``ignore_index``. Larger objects are
painted first so smaller ones stay visible.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from .base import DatasetLayoutError, Sample, SplitData, resolve_inside


def find_coco_split(root: Path, split: str) -> tuple[Path, Path]:
    tried = []
    for img_dir, ann in ((root / f"{split}2017", root / "annotations" / f"instances_{split}2017.json"),
                         (root / split, root / "annotations" / f"instances_{split}.json")):
        if img_dir.is_dir() and ann.is_file():
            return img_dir, ann
        tried.append(f"{img_dir}/ + {ann}")
    raise DatasetLayoutError(f"format='coco': no split {split!r} in {root}; looked for " + " or ".join(tried))


def _dups(values) -> list:
    return sorted(v for v, n in Counter(values).items() if n > 1)


def load_coco(ann_file: Path) -> COCO:
    """Read and check a COCO annotation file, then index it with pycocotools.

    Raises ``ValueError`` naming the file, the annotation or image id, and what was expected, for: unreadable JSON,
    missing sections, duplicate image or category ids, images without file_name/size, annotations referring to an
    image id or category id that does not exist, polygons with fewer than 3 points, RLE whose size is not its
    image's, and (non-crowd) zero-area boxes or boxes outside their image.
    """
    try:
        data = json.loads(Path(ann_file).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{ann_file}: cannot read COCO annotations ({e})") from e
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{ann_file}: expected a list under {key!r}")
    dup = _dups(im.get("id") for im in data["images"])
    if dup:
        raise ValueError(f"{ann_file}: duplicate image ids {dup[:10]}; every image needs a unique id")
    dup = _dups(c.get("id") for c in data["categories"])
    if dup:
        raise ValueError(f"{ann_file}: duplicate category ids {dup[:10]}")
    sizes = {}
    for im in data["images"]:
        if not im.get("file_name") or not isinstance(im.get("height"), int) or not isinstance(im.get("width"), int):
            raise ValueError(f"{ann_file}: image id {im.get('id')} needs 'file_name', integer 'height' and 'width'")
        sizes[im["id"]] = (im["height"], im["width"])
    cats = {c["id"] for c in data["categories"]}
    for a in data["annotations"]:  # once per file, at set-up
        aid, img = a.get("id"), a.get("image_id")
        where = f"{ann_file}: annotation id {aid}"
        if img not in sizes:
            raise ValueError(f"{where} refers to image id {img}, which is not in 'images'")
        if a.get("category_id") not in cats:
            raise ValueError(f"{where} has category_id {a.get('category_id')}, which is not in 'categories' "
                             f"{sorted(cats)[:20]}")
        h, w = sizes[img]
        seg = a.get("segmentation")
        if isinstance(seg, list):
            if not seg or any(len(p) < 6 or len(p) % 2 for p in seg):
                n = min((len(p) // 2 for p in seg), default=0)
                raise ValueError(f"{where}: a polygon has {n} point(s); a polygon needs at least 3 (x, y) points")
        elif isinstance(seg, dict):
            if list(seg.get("size", [])) != [h, w]:
                raise ValueError(f"{where}: RLE size {seg.get('size')} differs from image id {img}'s [{h}, {w}]")
        else:
            raise ValueError(f"{where}: 'segmentation' must be polygons (a list) or RLE (a dict)")
        if not a.get("iscrowd", 0) and a.get("bbox") is not None:
            x, y, bw, bh = (float(v) for v in a["bbox"])
            if bw <= 0 or bh <= 0:
                raise ValueError(f"{where}: zero-area box {a['bbox']} (width and height must be > 0)")
            if x < -1 or y < -1 or x + bw > w + 1 or y + bh > h + 1:
                raise ValueError(f"{where}: box {a['bbox']} lies outside its image id {img} ({w}x{h})")
    coco = COCO()
    coco.dataset = data
    coco.createIndex()
    return coco


def ann_to_rle(segm, h: int, w: int) -> dict:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) as one compressed RLE."""
    if isinstance(segm, list):  # polygons
        return mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
    if isinstance(segm.get("counts"), list):  # uncompressed RLE
        return mask_utils.frPyObjects(segm, h, w)
    return segm  # compressed RLE


def ann_to_mask(segm, h: int, w: int) -> np.ndarray:
    return mask_utils.decode(ann_to_rle(segm, h, w)).astype(bool)


def anns_to_masks(segms: list, h: int, w: int) -> np.ndarray:
    """Many segmentations -> uint8 masks [N, H, W], decoded in one pycocotools call (its [H, W, N] Fortran-order
    result made C-contiguous, one copy)."""
    if not segms:
        return np.zeros((0, h, w), np.uint8)
    return np.ascontiguousarray(mask_utils.decode([ann_to_rle(s, h, w) for s in segms]).transpose(2, 0, 1))


def load_split(root: Path, split: str, ignore_index: int = 255) -> SplitData:
    img_dir, ann_file = find_coco_split(root, split)
    coco = load_coco(ann_file)
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
