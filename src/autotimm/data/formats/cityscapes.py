"""Cityscapes: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` and ``gtFine/<split>/<city>/*_gtFine_labelIds.png``.

labelIds are mapped to the 19 trainIds of the benchmark; every other labelId becomes ``ignore_index``.
"""

from __future__ import annotations

from pathlib import Path

from .base import DatasetLayoutError, Sample, SplitData, read_mask_file

# labelId -> trainId (cityscapesScripts labels.py)
LABEL_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                  26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CITYSCAPES_CLASSES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                      "bicycle"]


def load_split(root: Path, split: str) -> SplitData:
    if split == "test":  # gtFine/test exists but holds placeholders: scoring on it would be meaningless
        raise DatasetLayoutError("format='cityscapes': the test split's labels are not public (gtFine/test holds "
                                 "placeholders); evaluate on val, or submit test predictions to the benchmark server")
    img_root, gt_root = root / "leftImg8bit" / split, root / "gtFine" / split
    for d in (img_root, gt_root):
        if not d.is_dir():
            raise DatasetLayoutError(f"format='cityscapes': expected {d} (layout leftImg8bit/<split>/<city>/ and "
                                     f"gtFine/<split>/<city>/)")
    samples = []
    for img in sorted(img_root.glob("*/*_leftImg8bit.png")):
        stem = img.name[: -len("_leftImg8bit.png")]
        mask = gt_root / img.parent.name / f"{stem}_gtFine_labelIds.png"
        if not mask.is_file():
            raise FileNotFoundError(f"format='cityscapes': image {img} has no label file {mask}")
        samples.append(Sample(image_path=img, image_id=stem, mask_path=mask))
    if not samples:
        raise DatasetLayoutError(f"format='cityscapes': no *_leftImg8bit.png under {img_root}/<city>/")
    return SplitData(samples=samples, read_mask=read_mask_file, mapping=dict(LABEL_TO_TRAIN), strict_mapping=False,
                     class_names=CITYSCAPES_CLASSES)
