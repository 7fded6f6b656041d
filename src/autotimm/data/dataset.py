"""Semantic segmentation dataset over any format, and its collate function (the batch contract)."""

from __future__ import annotations

import logging
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from .formats.base import Sample, SplitData
from .labels import LabelMapper, check_labels
from .transforms import apply_eval, eval_finish, eval_resize

log = logging.getLogger(__name__)


def read_image(path) -> np.ndarray:
    """RGB uint8 ``[H,W,3]``; greyscale and RGBA are converted. An unreadable file raises naming it."""
    data = np.fromfile(str(path), dtype=np.uint8) if path.is_file() else None
    if data is None:
        raise FileNotFoundError(f"image {path} does not exist")
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise ValueError(f"image {path}: cannot decode it (corrupt, truncated or not an image)")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    else:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.dtype != np.uint8:  # 16-bit images
        img = (img / np.iinfo(img.dtype).max * 255).astype(np.uint8)
    return img


def find_corrupt(paths) -> list[str]:
    """Decode every image once; return the ones that fail (for ``skip_corrupt``: counted, logged, dropped)."""
    bad = []
    for p in paths:  # once, at set-up, only when the user asked to skip corrupt files
        try:
            read_image(p)
        except (ValueError, FileNotFoundError) as e:
            bad.append(str(p))
            log.warning("skipping corrupt image %s: %s", p, e)
    return bad


def drop_corrupt(data, where: str) -> list[str]:
    """``skip_corrupt``: leave out the samples of ``data`` (``.samples`` with ``.image_path``) whose image does not
    decode; return them (counted and logged by the caller's data module)."""
    bad = set(find_corrupt([s.image_path for s in data.samples]))
    if bad:
        data.samples = [s for s in data.samples if str(s.image_path) not in bad]
        log.warning("%s: skipped %d corrupt image(s) (skip_corrupt=True)", where, len(bad))
    return sorted(bad)


class SegmentationDataset(Dataset):
    """Items: ``image`` float [3,H,W], ``mask`` int64 [H,W], ``image_id``, ``orig_size`` (h, w),
    ``valid_size`` (un-padded h, w after resizing) and, for evaluation, ``orig_mask`` at the original size."""

    def __init__(self, split: SplitData, transform=None, train: bool = True, image_size: int = 512,
                 ignore_index: int = 255, num_classes: int | None = None,
                 class_mapping: dict[int, int] | None = None, preprocess: dict | None = None):
        self.split = split
        self.samples: list[Sample] = split.samples
        self.transform = transform
        self.train = train
        self.ignore_index = ignore_index
        self.num_classes = num_classes
        mapping, strict = (class_mapping, True) if class_mapping is not None else (split.mapping, split.strict_mapping)
        self.mapper = LabelMapper(mapping, ignore_index, strict) if mapping is not None else None
        self._resize = None if (train or transform is not None) else eval_resize(image_size, preprocess)
        self._finish = None if (train or transform is not None) else eval_finish(image_size, ignore_index, preprocess)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, idx: int) -> tuple[np.ndarray, np.ndarray, Sample]:
        s = self.samples[idx]
        image = read_image(s.image_path)
        mask = self.split.read_mask(s)
        source = str(s.mask_path or s.extra.get("ann_file") or s.image_path)
        if mask.shape != image.shape[:2]:
            raise ValueError(f"mask {source} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image {s.image_path} is "
                             f"{image.shape[1]}x{image.shape[0]}; they must be the same size")
        if self.mapper is not None:
            mask = self.mapper(mask, source)
        check_labels(mask, self.num_classes, self.ignore_index, source)
        return image, mask, s

    def __getitem__(self, idx: int) -> dict[str, Any]:
        image, mask, s = self.load(idx)
        h, w = mask.shape
        fits_u8 = mask.max(initial=0) <= 255 and mask.min(initial=0) >= 0
        small = mask.astype(np.uint8 if fits_u8 else np.int32)  # cv2 transforms need u8/int32 masks
        if self.train:
            out = self.transform(image=image, mask=small)
            valid = tuple(out["image"].shape[-2:])
        else:
            out, valid = apply_eval(self._resize, self._finish, self.transform, image, mask=small)
        item = {"image": out["image"], "mask": torch.as_tensor(out["mask"]).long(), "image_id": s.image_id,
                "orig_size": torch.tensor([h, w]), "valid_size": torch.tensor([int(valid[0]), int(valid[1])])}
        if not self.train:
            item["orig_mask"] = torch.from_numpy(mask)
        return item


def collate_segmentation(items: list[dict[str, Any]]) -> dict[str, Any]:
    batch: dict[str, Any] = {
        "image": torch.stack([it["image"] for it in items]),
        "mask": torch.stack([it["mask"] for it in items]),
        "image_id": [it["image_id"] for it in items],
        "orig_size": torch.stack([it["orig_size"] for it in items]),
        "valid_size": torch.stack([it["valid_size"] for it in items]),
    }
    if "orig_mask" in items[0]:
        batch["orig_mask"] = [it["orig_mask"] for it in items]
    return batch
