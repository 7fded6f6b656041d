"""COCO instance annotations: ``<root>/<split>2017/`` + ``<root>/annotations/instances_<split>2017.json``, or
``<root>/<split>/`` + ``<root>/annotations/instances_<split>.json``. Polygons and RLE (compressed or not) are decoded
with pycocotools, one decode per image; crowd annotations are kept (out of training targets, in evaluation as
crowd); images without annotations are kept; category ids map to contiguous labels in id order
(``category_ids`` maps back). Masks may overlap, so they stay ``[N,H,W]``. ``min_area`` and ``min_keypoints`` drop
small or keypoint-poor non-crowd annotations."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..formats.coco import anns_to_masks, find_coco_split, load_coco, resolve_inside
from .base import Instances, InstanceSample, InstanceSplit


def load_split(root: Path, split: str, min_area: float = 0.0, min_keypoints: int = 0) -> InstanceSplit:
    img_dir, ann_file = find_coco_split(Path(root), split)
    coco = load_coco(ann_file)
    category_ids = sorted(coco.getCatIds())
    cat_to_label = {c: i for i, c in enumerate(category_ids)}
    samples, missing = [], []
    for i in sorted(coco.getImgIds()):  # images without annotations are kept
        path = resolve_inside(img_dir, coco.imgs[i]["file_name"], f"{ann_file} image id {i}")
        if not path.is_file():
            missing.append(f"{coco.imgs[i]['file_name']} (image id {i})")
        samples.append(InstanceSample(image_path=path, image_id=i))
    if missing:
        raise FileNotFoundError(f"{ann_file}: {len(missing)} image file(s) missing from {img_dir}: {missing[:5]}")

    def read_instances(sample: InstanceSample, h: int, w: int) -> Instances:
        info = coco.imgs[sample.image_id]
        if (h, w) != (info["height"], info["width"]):
            raise ValueError(f"{ann_file}: image id {sample.image_id} ({sample.image_path}) is {w}x{h} but the "
                             f"annotation file says {info['width']}x{info['height']}")
        segms, labels, crowd = [], [], []
        for a in coco.imgToAnns.get(sample.image_id, []):
            if not a.get("iscrowd", 0):
                if float(a.get("area", 0)) < min_area:
                    continue
                if min_keypoints and a.get("num_keypoints", min_keypoints) < min_keypoints:
                    continue
            segms.append(a["segmentation"])
            labels.append(cat_to_label[a["category_id"]])
            crowd.append(bool(a.get("iscrowd", 0)))
        masks = anns_to_masks(segms, h, w)  # one pycocotools decode for the image's instances
        labels, crowd = np.asarray(labels, np.int64), np.asarray(crowd, bool)
        keep = crowd | masks.any(axis=(1, 2))  # nothing to learn from an empty mask
        if not keep.all():
            masks, labels, crowd = masks[keep], labels[keep], crowd[keep]
        return Instances(labels=labels, crowd=crowd, masks=masks)

    return InstanceSplit(samples=samples, read_instances=read_instances,
                         class_names=[coco.cats[c]["name"] for c in category_ids], category_ids=category_ids,
                         extra={"coco": coco, "img_dir": img_dir, "ann_file": ann_file})
