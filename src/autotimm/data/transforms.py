"""Augmentation presets (albumentations), applied jointly to image and mask.

Training: ``light`` (resize, pad, flip), ``default`` (+ random scale and crop, colour jitter), ``strong`` (+ rotation,
larger scale range, blur/noise). Mask padding and fill use ``ignore_index``, so padded pixels never count.
Evaluation keeps the aspect ratio: longest side resized to ``image_size`` then padded bottom/right (``eval_resize``
and ``eval_finish`` are separate so the un-padded size is known and predictions can be cropped back).

Normalisation (``mean``, ``std``) and the image interpolation come from the model's ``preprocess`` (the backbone's
timm pretrained config) through the data module; ImageNet statistics are only the fallback of a data module used
without a model.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

PRESETS = ("light", "default", "strong")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CV2_INTERPOLATION = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC,
                     "area": cv2.INTER_AREA, "lanczos": cv2.INTER_LANCZOS4}
DEFAULT_PREPROCESS = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "interpolation": "bilinear"}


def _normalize(pre: dict | None) -> list:
    pre = pre or DEFAULT_PREPROCESS
    return [A.Normalize(mean=tuple(pre["mean"]), std=tuple(pre["std"])), ToTensorV2()]


def _interp(pre: dict | None) -> int:
    return CV2_INTERPOLATION[(pre or DEFAULT_PREPROCESS)["interpolation"]]


def _pad(size: int, ignore_index: int, position: str = "center") -> A.PadIfNeeded:
    return A.PadIfNeeded(min_height=size, min_width=size, position=position, border_mode=cv2.BORDER_CONSTANT,
                         fill=0, fill_mask=ignore_index)


def _fixed_scale(scale: float, preprocess: dict | None) -> A.RandomScale:
    """Resize by exactly ``scale`` (albumentations' RandomScale over a one-point range)."""
    return A.RandomScale(scale_limit=(float(scale) - 1, float(scale) - 1), interpolation=_interp(preprocess), p=1.0)


class FocusCrop(A.RandomCrop):
    """A ``size`` square crop that, with probability ``p_focus``, holds a pixel of one of ``classes``: a class is drawn
    uniformly among those the mask holds, then one of its pixels, placed at a random position inside the crop (as
    albumentations' ``CropNonEmptyMaskIfExists`` places it). Otherwise, or when the mask holds none of them, a plain
    random crop. Drawing the class first gives a pole the crops a fence gets, where a pixel drawn over all the classes'
    pixels (``CropNonEmptyMaskIfExists``, which also never focuses class 0) would mostly land on the larger one."""

    def __init__(self, size: int, classes: list[int], p_focus: float = 0.5):
        super().__init__(int(size), int(size), p=1.0)
        if not classes:
            raise ValueError("crop_focus_classes: give at least one class id")
        if not 0.0 <= float(p_focus) <= 1.0:
            raise ValueError(f"crop_focus_p must be in [0, 1], got {p_focus}")
        self.classes = np.asarray(sorted({int(c) for c in classes}))
        self.p_focus = float(p_focus)

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        mask = data.get("mask")
        if mask is None:
            raise RuntimeError("FocusCrop needs the mask (crop_focus_classes is for semantic segmentation)")
        h, w = mask.shape[:2]
        if self.height > h or self.width > w:
            raise ValueError(f"crop_size {self.height} is larger than the {h}x{w} training image")
        present = np.unique(mask[np.isin(mask, self.classes)]) if self.py_random.random() < self.p_focus else []
        if len(present):
            ys, xs = np.nonzero(mask == present[self.py_random.randrange(len(present))])
            i = self.py_random.randrange(len(ys))
            x0 = int(np.clip(xs[i] - self.py_random.randint(0, self.width - 1), 0, w - self.width))
            y0 = int(np.clip(ys[i] - self.py_random.randint(0, self.height - 1), 0, h - self.height))
        else:
            x0, y0 = self.py_random.randint(0, w - self.width), self.py_random.randint(0, h - self.height)
        return {"crop_coords": (x0, y0, x0 + self.width, y0 + self.height)}


def train_transforms(preset: str, image_size: int, ignore_index: int = 255, bbox_params=None,
                     preprocess: dict | None = None, crop_size: int | None = None,
                     scale: float | None = None, crop_focus_classes: list[int] | None = None,
                     crop_focus_p: float = 0.5) -> A.Compose:
    """The preset at ``image_size`` (the scale evaluation also uses); ``crop_size`` (< ``image_size``) then trains on
    random square crops of that size (mmseg's ``crop_size``): full-resolution detail at a crop's cost. With ``scale``
    every image is resized by that factor instead (a fixed pixel size, as microscopy wants: the longest side would
    shrink a large image's objects) and ``image_size`` is the square training window cropped from it.
    ``crop_focus_classes``: that crop holds one of these classes with probability ``crop_focus_p`` (``FocusCrop``)."""
    if preset not in PRESETS:
        raise ValueError(f"augmentation_preset: unknown {preset!r}; valid: {list(PRESETS)}")
    s = int(image_size)
    ops: list = [_fixed_scale(scale, preprocess) if scale else A.LongestMaxSize(max_size=s,
                                                                                 interpolation=_interp(preprocess))]
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
    if scale and preset == "light":  # the other presets crop to the window already
        ops += [A.RandomCrop(s, s)]
    if crop_focus_classes and (crop_size is None or int(crop_size) >= s):
        raise ValueError("crop_focus_classes needs crop_size smaller than image_size (it places the crop)")
    if crop_size is not None and int(crop_size) < s:
        ops += [FocusCrop(int(crop_size), crop_focus_classes, crop_focus_p) if crop_focus_classes
                else A.RandomCrop(int(crop_size), int(crop_size))]
    return A.Compose(ops + _normalize(preprocess), bbox_params=bbox_params)


def eval_resize(image_size: int, preprocess: dict | None = None, scale: float | None = None) -> A.Compose:
    """Longest side to ``image_size``, or (``scale``) every image resized by that factor."""
    if scale:
        return A.Compose([_fixed_scale(scale, preprocess)])
    return A.Compose([A.LongestMaxSize(max_size=int(image_size), interpolation=_interp(preprocess))])


def eval_finish(image_size: int, ignore_index: int = 255, preprocess: dict | None = None,
                pad_multiple: int | None = None) -> A.Compose:
    """Padded bottom/right to the ``image_size`` square, or (``pad_multiple``: images of their own size after a fixed
    ``scale``) to the next multiple of it; then normalised."""
    if pad_multiple:
        pad = A.PadIfNeeded(min_height=None, min_width=None, pad_height_divisor=int(pad_multiple),
                            pad_width_divisor=int(pad_multiple), position="top_left", border_mode=cv2.BORDER_CONSTANT,
                            fill=0, fill_mask=ignore_index)
        return A.Compose([pad] + _normalize(preprocess))
    return A.Compose([_pad(int(image_size), ignore_index, position="top_left")] + _normalize(preprocess))


class ModelPreprocess:
    """Data-module mixin: the normalisation and interpolation it feeds (``self.preprocess``).

    Explicit ``mean`` / ``std`` / ``interpolation`` given to the data module win, and the model attached through the
    trainer adopts them (and the data module's ``image_size``) so its checkpoint reproduces them; otherwise the
    attached model's ``preprocess`` (its backbone's timm pretrained config) is used; a data module used without a
    model falls back to ImageNet statistics."""

    mean: list[float] | None = None
    std: list[float] | None = None
    interpolation: str | None = None

    def _init_preprocess(self, mean, std, interpolation):
        self.mean = [float(v) for v in mean] if mean is not None else None
        self.std = [float(v) for v in std] if std is not None else None
        if interpolation is not None and interpolation not in CV2_INTERPOLATION:
            raise ValueError(f"interpolation: unknown {interpolation!r}; valid: {list(CV2_INTERPOLATION)}")
        self.interpolation = interpolation
        self.preprocess = None

    def _sync_preprocess(self) -> dict:
        trainer = getattr(self, "_trainer", None) or getattr(self, "trainer", None)
        model = getattr(trainer, "lightning_module", None) if trainer is not None else None
        model_pre = getattr(model, "preprocess", None) if model is not None else None
        base = dict(model_pre) if model_pre else dict(DEFAULT_PREPROCESS)
        own = {"mean": self.mean, "std": self.std, "interpolation": self.interpolation}
        pre = {**base, **{k: v for k, v in own.items() if v is not None}}
        pre = {k: pre[k] for k in ("mean", "std", "interpolation")}
        if self.preprocess is not None and pre != self.preprocess:  # built for other statistics: build again
            for name in ("train_dataset", "val_dataset", "test_dataset"):
                setattr(self, name, None)
        if model_pre and hasattr(model, "update_preprocess"):
            model.update_preprocess(f"{type(self).__name__}", **{k: v for k, v in own.items() if v is not None},
                                    image_size=self.image_size, scale=getattr(self, "scale", None))
        self.preprocess = pre
        return pre


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


def paste_classes(images, masks, classes, prob: float = 0.5, generator=None):
    """Batch-level copy-paste of the named classes (the rare-class paste of ClassMix / DACS, Olsson et al. 2021,
    Tranheden et al. 2021, with a fixed class list): each image, with probability ``prob``, receives the pixels of
    ``classes`` (image and label alike, at the same place) from another image of the batch, each image's source
    a different one (a random cyclic permutation). A pole or sign so lands in front of other buildings and trees,
    the classes they are confused with. ``images [B,C,H,W]`` (already normalised: the same statistics on both
    sides), ``masks [B,H,W]``; new tensors are returned, the inputs are not changed. A batch of one is returned as
    is. Vectorised: one ``isin`` and two ``where`` over the batch."""
    b = images.shape[0]
    if b < 2 or not len(classes) or prob <= 0:
        return images, masks
    order = torch.randperm(b, generator=generator).to(images.device)
    src = torch.empty_like(order)
    src[order] = order.roll(1)                                  # a cycle through the batch: never its own source
    chosen = torch.rand(b, generator=generator).to(images.device) < prob
    src_masks = masks[src]
    take = torch.isin(src_masks, torch.as_tensor(classes, device=masks.device)) & chosen[:, None, None]
    return torch.where(take[:, None], images[src], images), torch.where(take, src_masks, masks)
