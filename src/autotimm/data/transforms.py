"""Augmentation presets (albumentations), applied jointly to image and mask.

Training: ``light`` (resize, pad, flip), ``default`` (+ random scale and crop, colour jitter), ``strong`` (+ rotation,
larger scale range, blur/noise). Mask padding and fill use ``ignore_index``, so padded pixels never count.
Evaluation keeps the aspect ratio: longest side resized to ``image_size`` then padded bottom/right (``eval_resize``
and ``eval_finish`` are separate so the un-padded size is known and predictions can be cropped back).
"""

from __future__ import annotations

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

PRESETS = ("light", "default", "strong")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _normalize() -> list:
    return [A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD), ToTensorV2()]


def _pad(size: int, ignore_index: int, position: str = "center") -> A.PadIfNeeded:
    return A.PadIfNeeded(min_height=size, min_width=size, position=position, border_mode=cv2.BORDER_CONSTANT,
                         fill=0, fill_mask=ignore_index)


def train_transforms(preset: str, image_size: int, ignore_index: int = 255, bbox_params=None) -> A.Compose:
    if preset not in PRESETS:
        raise ValueError(f"augmentation_preset: unknown {preset!r}; valid: {list(PRESETS)}")
    s = int(image_size)
    ops: list = [A.LongestMaxSize(max_size=s)]
    if preset == "light":
        ops += [_pad(s, ignore_index), A.HorizontalFlip(p=0.5)]
    elif preset == "default":
        ops += [A.RandomScale(scale_limit=(-0.3, 0.5), p=1.0), _pad(s, ignore_index), A.RandomCrop(s, s),
                A.HorizontalFlip(p=0.5),
                A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.5)]
    else:
        ops += [A.RandomScale(scale_limit=(-0.5, 1.0), p=1.0),
                A.Affine(rotate=(-20, 20), shear=(-5, 5), border_mode=cv2.BORDER_CONSTANT, fill=0,
                         fill_mask=ignore_index, p=0.5),
                _pad(s, ignore_index), A.RandomCrop(s, s), A.HorizontalFlip(p=0.5),
                A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.05, p=0.8),
                A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.GaussNoise(std_range=(0.02, 0.08))], p=0.3)]
    return A.Compose(ops + _normalize(), bbox_params=bbox_params)


def eval_resize(image_size: int) -> A.Compose:
    return A.Compose([A.LongestMaxSize(max_size=int(image_size))])


def eval_finish(image_size: int, ignore_index: int = 255) -> A.Compose:
    return A.Compose([_pad(int(image_size), ignore_index, position="top_left")] + _normalize())


def apply_eval(resize, finish, transform, image, **targets) -> tuple[dict, tuple[int, int]]:
    """Evaluation transform -> (output, un-padded size after resizing). The built-in pipeline resizes (``resize``),
    notes the size, then pads and normalises (``finish``); a custom ``transform`` runs alone and its whole output
    size counts as valid."""
    if transform is not None:
        out = transform(image=image, **targets)
        return out, tuple(int(v) for v in out["image"].shape[-2:])
    r = resize(image=image, **targets)
    valid = tuple(int(v) for v in r["image"].shape[:2])
    return finish(**r), valid
