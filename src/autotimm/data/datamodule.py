"""SegmentationDataModule: one Lightning DataModule over the png, coco, cityscapes and voc layouts."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from .dataset import SegmentationDataset, collate_segmentation, drop_corrupt
from .formats import FORMATS, DatasetLayoutError
from .formats.base import resolve_test_split
from .transforms import PRESETS, ModelPreprocess, train_transforms

log = logging.getLogger(__name__)


class SegmentationDataModule(ModelPreprocess, pl.LightningDataModule):
    """Args:
        data_dir: dataset root (see each format's layout in ``autotimm.data.formats``).
        format: ``png``, ``coco``, ``cityscapes``, ``voc`` or ``camvid``.
        image_size: training crop size; evaluation resizes the longest side to it and pads (aspect kept).
        crop_size: train on random ``crop_size`` squares of the ``image_size`` training images (mmseg's
            ``crop_size``); evaluation stays whole at ``image_size``. ``None``: no crop.
        crop_focus_classes / crop_focus_p: with ``crop_size``, a training crop holds a pixel of one of these class
            ids with probability ``crop_focus_p`` (the class drawn uniformly among those in the image, then a pixel
            of it; ``autotimm.data.transforms.FocusCrop``): more crops of the rare classes. ``None``: random crops.
        batch_size / num_workers: loader settings.
        augmentation_preset: ``light``, ``default`` or ``strong``.
        custom_train_transforms / custom_val_transforms: albumentations ``Compose`` replacing the preset (they must
            end in ``ToTensorV2``); with a custom val transform, metrics use its output size as the valid region.
        class_mapping: raw label -> class id, applied with a lookup table; replaces the format's own mapping
            (Cityscapes labelIds, COCO category ids). Raw values it does not list are an error.
        ignore_index: void label, also used for padding.
        num_classes: when given, masks with labels >= num_classes (other than ignore_index) fail with the file name.
        train_split / val_split / test_split: split names (``test_split=None`` reuses the validation split).
        skip_corrupt: an unreadable or truncated image is an error naming the file (default); with True, every
            image is decoded once at set-up and the bad ones are skipped, counted (``skipped_corrupt``) and logged.
        pin_memory / persistent_workers: loader settings.
        class_names: one name per class (default: the format's own, where it has them: CamVid, Cityscapes, COCO).
        mean / std / interpolation: input normalisation and resize interpolation; by default the attached model's
            (its backbone's timm pretrained config), which then also travel in the checkpoint (see
            ``ModelPreprocess``).
    """

    task_kind = "semantic"  # the models it feeds (``SemanticSegmentor.task_kind``)

    def __init__(self, data_dir: str | Path, format: str = "png", image_size: int = 512, batch_size: int = 8,
                 num_workers: int = 4, augmentation_preset: str = "default", custom_train_transforms: Any = None,
                 custom_val_transforms: Any = None, class_mapping: dict[int, int] | None = None,
                 ignore_index: int = 255, num_classes: int | None = None, train_split: str = "train",
                 val_split: str = "val", test_split: str | None = None, pin_memory: bool = False,
                 persistent_workers: bool = True, skip_corrupt: bool = False, mean: list[float] | None = None,
                 std: list[float] | None = None, interpolation: str | None = None,
                 class_names: list[str] | None = None, crop_size: int | None = None,
                 crop_focus_classes: list[int] | None = None, crop_focus_p: float = 0.5):
        super().__init__()
        if class_names is not None and num_classes is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names: {len(class_names)} names for num_classes={num_classes}")
        self._init_preprocess(mean, std, interpolation)
        if format not in FORMATS:
            raise ValueError(f"format: unknown {format!r}; valid: {sorted(FORMATS)}")
        if augmentation_preset not in PRESETS:
            raise ValueError(f"augmentation_preset: unknown {augmentation_preset!r}; valid: {list(PRESETS)}")
        if int(image_size) < 16:
            raise ValueError(f"image_size must be >= 16, got {image_size}")
        if crop_size is not None and not 16 <= int(crop_size) <= int(image_size):
            raise ValueError(f"crop_size must be between 16 and image_size ({image_size}), got {crop_size}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if crop_focus_classes is not None and len(crop_focus_classes) == 0:
            raise ValueError("crop_focus_classes: give at least one class id, or null for random crops")
        if crop_focus_classes is not None and (crop_size is None or int(crop_size) >= int(image_size)):
            raise ValueError(f"crop_focus_classes needs crop_size smaller than image_size ({image_size}), "
                             f"got crop_size={crop_size}")
        if crop_focus_classes is not None and num_classes is not None and \
                not all(0 <= int(c) < num_classes for c in crop_focus_classes):
            raise ValueError(f"crop_focus_classes: class ids must be in [0, {num_classes}), got "
                             f"{list(crop_focus_classes)}")
        if not 0.0 <= float(crop_focus_p) <= 1.0:
            raise ValueError(f"crop_focus_p must be in [0, 1], got {crop_focus_p}")
        self.crop_focus_classes = [int(c) for c in crop_focus_classes] if crop_focus_classes is not None else None
        self.crop_focus_p = float(crop_focus_p)
        self.data_dir = Path(data_dir)
        self.format = format
        self.image_size = int(image_size)
        self.crop_size = int(crop_size) if crop_size is not None else None
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.augmentation_preset = augmentation_preset
        self.custom_train_transforms = custom_train_transforms
        self.custom_val_transforms = custom_val_transforms
        self.class_mapping = {int(k): int(v) for k, v in class_mapping.items()} if class_mapping else None
        self.ignore_index = ignore_index
        self.num_classes = num_classes
        self.train_split, self.val_split, self.test_split = train_split, val_split, test_split
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.skip_corrupt = skip_corrupt
        self.skipped_corrupt: list[str] = []
        self.train_dataset = self.val_dataset = self.test_dataset = None
        self.test_split_used: str | None = None  # the split test/* metrics come from (set up for "test")
        self.test_on_val = False  # no labelled test split: test/* metrics are the val split's
        self.class_names: list[str] | None = list(class_names) if class_names is not None else None

    def _split(self, name: str):
        if not self.data_dir.is_dir():
            raise DatasetLayoutError(f"data_dir {self.data_dir} does not exist (format={self.format!r})")
        module = FORMATS[self.format]
        if "ignore_index" in inspect.signature(module.load_split).parameters:  # formats that map labels to void
            return module.load_split(self.data_dir, name, ignore_index=self.ignore_index)
        return module.load_split(self.data_dir, name)

    def _dataset(self, split: str, train: bool) -> SegmentationDataset:
        data = self._split(split)
        if self.skip_corrupt:
            self.skipped_corrupt += drop_corrupt(data, f"{self.format} split {split!r}")
        self.class_names = self.class_names or data.class_names
        if train:
            tf = self.custom_train_transforms or train_transforms(self.augmentation_preset, self.image_size,
                                                                  self.ignore_index, preprocess=self.preprocess,
                                                                  crop_size=self.crop_size,
                                                                  crop_focus_classes=self.crop_focus_classes,
                                                                  crop_focus_p=self.crop_focus_p)
        else:
            tf = self.custom_val_transforms
        ds = SegmentationDataset(data, tf, train=train, image_size=self.image_size, ignore_index=self.ignore_index,
                                 num_classes=self.num_classes, class_mapping=self.class_mapping,
                                 preprocess=self.preprocess)
        log.info("%s split %r: %d images from %s", self.format, split, len(ds), self.data_dir)
        return ds

    def setup(self, stage: str | None = None):
        self._sync_preprocess()
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = self._dataset(self.train_split, train=True)
        if stage in (None, "fit", "validate") and self.val_dataset is None:
            self.val_dataset = self._dataset(self.val_split, train=False)
        if stage in (None, "test", "predict") and self.test_dataset is None:
            split, self.test_dataset = resolve_test_split(lambda name: self._dataset(name, train=False),
                                                          self.test_split, self.val_split,
                                                          f"format={self.format!r} at {self.data_dir}", log)
            self.test_split_used = split
            self.test_on_val = split == self.val_split and not self.test_split

    def _loader(self, ds, shuffle: bool) -> DataLoader:
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=collate_segmentation, pin_memory=self.pin_memory, drop_last=False,
                          persistent_workers=self.persistent_workers and self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, shuffle=False)
