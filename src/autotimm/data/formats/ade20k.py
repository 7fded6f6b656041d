"""ADE20K as the MIT Scene Parsing benchmark ships it (``ADEChallengeData2016``, 150 classes):
``<root>/images/{training,validation}/*.jpg`` with ``<root>/annotations/{training,validation}/*.png`` (pixel value
0 = "other objects" -> ``ignore_index``; 1..150 -> classes 0..149, as mmseg's ``reduce_zero_label``). ``<root>``
may be the ``ADEChallengeData2016`` folder itself or the folder holding it; split names ``train`` / ``val`` map to
``training`` / ``validation``."""

from __future__ import annotations

from pathlib import Path

from .base import DatasetLayoutError, Sample, SplitData, list_images, read_mask_file, require_dir

ADE20K_CLASSES = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock",
    "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers",
    "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway",
    "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table",
    "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer",
    "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land",
    "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall",
    "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase",
    "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower",
    "radiator", "glass", "clock", "flag"]
SPLITS = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}
OTHER = 0  # "other objects": not one of the 150 classes


def dataset_root(root: Path) -> Path:
    nested = root / "ADEChallengeData2016"
    return nested if nested.is_dir() else root


def load_split(root: Path, split: str, ignore_index: int = 255) -> SplitData:
    if split not in SPLITS:
        raise ValueError(f"format='ade20k': unknown split {split!r}; valid: {sorted(SPLITS)}")
    base = dataset_root(root)
    folder = SPLITS[split]
    img_dir = require_dir(base / "images" / folder, f"the image folder images/{folder}/", "ade20k")
    ann_dir = require_dir(base / "annotations" / folder, f"the label folder annotations/{folder}/", "ade20k")
    images = list_images(img_dir)
    if not images:
        raise DatasetLayoutError(f"format='ade20k': no images in {img_dir}")
    labels = {p.stem: p for p in ann_dir.glob("*.png")}
    missing = [p.name for p in images if p.stem not in labels]
    if missing:
        raise ValueError(f"format='ade20k': {len(missing)} image(s) in {img_dir} have no label <name>.png in "
                         f"{ann_dir}: {missing[:5]}")
    samples = [Sample(image_path=p, image_id=p.stem, mask_path=labels[p.stem]) for p in images]
    # 0 -> void, 1..150 -> 0..149; any other value is an error naming the file (nothing silently relabelled)
    mapping = {OTHER: ignore_index, **{c + 1: c for c in range(len(ADE20K_CLASSES))}}
    return SplitData(samples=samples, read_mask=read_mask_file, mapping=mapping, strict_mapping=True,
                     class_names=list(ADE20K_CLASSES))
