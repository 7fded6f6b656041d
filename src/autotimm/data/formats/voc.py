"""Pascal VOC 2012: ``VOCdevkit/VOC2012`` (or its contents) with ``JPEGImages``, ``SegmentationClass`` palette PNGs
and ``ImageSets/Segmentation/<split>.txt``. Palette indices are the class ids (0 background, 1..20); 255 is void."""

from __future__ import annotations

from pathlib import Path

from .base import DatasetLayoutError, Sample, SplitData, read_mask_file, resolve_inside

VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor"]


def voc_root(root: Path) -> Path:
    for cand in (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root):
        if (cand / "JPEGImages").is_dir() and (cand / "SegmentationClass").is_dir():
            return cand
    raise DatasetLayoutError(f"format='voc': looked for JPEGImages/ and SegmentationClass/ in "
                             f"{root}/VOCdevkit/VOC2012, {root}/VOC2012 and {root}; none has both")


def load_split(root: Path, split: str) -> SplitData:
    base = voc_root(root)
    list_file = base / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not list_file.is_file():
        raise DatasetLayoutError(f"format='voc': split list {list_file} does not exist")
    ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    samples = []
    for i in ids:
        img = resolve_inside(base / "JPEGImages", f"{i}.jpg", f"{list_file} entry {i!r}")
        mask = resolve_inside(base / "SegmentationClass", f"{i}.png", f"{list_file} entry {i!r}")
        for p, what in ((img, "image"), (mask, "mask")):
            if not p.is_file():
                raise FileNotFoundError(f"format='voc': {list_file.name} lists {i!r} but its {what} {p} is missing")
        samples.append(Sample(image_path=img, image_id=i, mask_path=mask))
    return SplitData(samples=samples, read_mask=read_mask_file, class_names=VOC_CLASSES)
