"""``png`` layout: ``<root>/<split>/images/<stem>.<ext>`` with ``<root>/<split>/masks/<stem>.png``.

Masks hold class ids (single channel, palette or greyscale); ``ignore_index`` (255) marks void pixels.
"""

from __future__ import annotations

from pathlib import Path

from .base import DatasetLayoutError, Sample, SplitData, list_images, read_mask_file, require_dir


def load_split(root: Path, split: str) -> SplitData:
    if not (root / split).is_dir():
        raise DatasetLayoutError(f"format='png': expected split folder {root / split} with images/ and masks/ "
                                 f"inside (layout <root>/<split>/images/*, <root>/<split>/masks/<stem>.png)")
    img_dir = require_dir(root / split / "images", "an images/ folder", "png")
    mask_dir = require_dir(root / split / "masks", "a masks/ folder", "png")
    images = list_images(img_dir)
    masks = {p.stem: p for p in mask_dir.glob("*.png")}
    stems = [p.stem for p in images]
    missing = [p.name for p in images if p.stem not in masks]
    if missing:
        raise ValueError(f"format='png': {len(missing)} image(s) in {img_dir} have no mask <stem>.png in {mask_dir}: "
                         f"{missing[:5]}")
    orphans = sorted(set(masks) - set(stems))
    if orphans:
        raise ValueError(f"format='png': {len(orphans)} mask(s) in {mask_dir} have no image in {img_dir}: "
                         f"{[masks[s].name for s in orphans[:5]]}")
    if not images:
        raise DatasetLayoutError(f"format='png': no images in {img_dir}")
    samples = [Sample(image_path=p, image_id=p.stem, mask_path=masks[p.stem]) for p in images]
    return SplitData(samples=samples, read_mask=read_mask_file)
