"""CamVid as SegNet ships it (11 classes, 480x360): ``<root>/<split>/*.png`` with ``<root>/<split>annot/*.png``
(pixel value = class id, 11 = void -> ``ignore_index``). When ``<root>/<split>.txt`` is present, its entries
(``/SegNet/CamVid/<split>/<name>.png /SegNet/CamVid/<split>annot/<name>.png``: absolute paths from the authors'
container) are resolved relative to ``<root>`` by their last two components and define the split."""

from __future__ import annotations

from pathlib import Path

from .base import DatasetLayoutError, Sample, SplitData, list_images, read_mask_file, require_dir, resolve_inside

CAMVID_CLASSES = ["sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car", "pedestrian",
                  "bicyclist"]
VOID = 11


def _from_list(root: Path, split: str, list_file: Path) -> list[Sample]:
    samples = []
    for n, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{list_file} line {n}: expected '<image path> <label path>', got {line!r}")
        image, label = (resolve_inside(root, str(Path(*Path(p).parts[-2:])), f"{list_file} line {n}") for p in parts)
        for path, what, entry in ((image, "image", parts[0]), (label, "label", parts[1])):
            if not path.is_file():
                raise FileNotFoundError(f"{list_file} line {n}: {what} file {path} does not exist (entry {entry!r}, "
                                        f"resolved relative to {root})")
        samples.append(Sample(image_path=image, image_id=image.stem, mask_path=label))
    return samples


def _from_folders(root: Path, split: str) -> list[Sample]:
    img_dir = require_dir(root / split, f"the image folder {split}/", "camvid")
    ann_dir = require_dir(root / f"{split}annot", f"the label folder {split}annot/", "camvid")
    images = list_images(img_dir)
    labels = {p.name: p for p in ann_dir.glob("*.png")}
    missing = [p.name for p in images if p.name not in labels]
    if missing:
        raise ValueError(f"format='camvid': {len(missing)} image(s) in {img_dir} have no label of the same name in "
                         f"{ann_dir}: {missing[:5]}")
    return [Sample(image_path=p, image_id=p.stem, mask_path=labels[p.name]) for p in images]


def load_split(root: Path, split: str, ignore_index: int = 255) -> SplitData:
    list_file = root / f"{split}.txt"
    samples = _from_list(root, split, list_file) if list_file.is_file() else _from_folders(root, split)
    if not samples:
        raise DatasetLayoutError(f"format='camvid': no images for split {split!r} under {root}")
    # 0..10 are the classes, 11 is void; any other value is an error naming the file (nothing silently relabelled)
    mapping = {**{c: c for c in range(len(CAMVID_CLASSES))}, VOID: ignore_index}
    return SplitData(samples=samples, read_mask=read_mask_file, mapping=mapping, strict_mapping=True,
                     class_names=list(CAMVID_CLASSES))
