"""Instance segmentation data: any instance format (``instance_formats``: COCO, DSB2018, instance-id PNGs, your own),
joint image/box/mask augmentation.

Batch contract: ``{"image": [B,3,H,W], "targets": [{"boxes": float [N,4] xyxy, "labels": int64 [N] in 0..C-1,
"masks": uint8 [N,H,W], "iscrowd": bool [N]}], "image_id": list, "orig_size": [B,2], "valid_size": [B,2]}``;
evaluation batches add ``"orig_targets"`` (original-size boxes, labels, masks and crowd flags, crowd included).
Training targets never contain crowd annotations.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from .dataset import drop_corrupt, read_image
from .formats.base import DatasetLayoutError, resolve_test_split
from .instance_formats import INSTANCE_FORMATS, Instances, InstanceSplit, resolve_instance_format
from .transforms import PRESETS, ModelPreprocess, apply_eval, eval_finish, eval_resize, train_transforms

log = logging.getLogger(__name__)


def mask_extents(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tight xyxy boxes in pixel edges (COCO's convention) of [N, H, W] masks, and which masks are non-empty.

    ``torchvision.ops.masks_to_boxes``'s algorithm (first and last non-empty row and column; an empty mask gives a
    zero box) plus one on x2 and y2, in numpy: torch's ``any`` over a [N, H, W] bool tensor ran ~5x slower than
    numpy's here, and a dense scene's loader calls this twice per image on ~300 full-size masks."""
    n, h, w = masks.shape
    if n == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, bool)
    rows, cols = masks.any(axis=2), masks.any(axis=1)  # [N, H], [N, W]
    nonempty = rows.any(axis=1)
    y1, x1 = rows.argmax(1), cols.argmax(1)
    y2, x2 = h - rows[:, ::-1].argmax(1), w - cols[:, ::-1].argmax(1)
    boxes = np.stack([x1, y1, x2, y2], 1).astype(np.float32)
    boxes[~nonempty] = (0, 0, 1, 1)
    return boxes, nonempty


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight xyxy boxes in pixel edges of [N, H, W] masks (``mask_extents``' boxes)."""
    return mask_extents(np.asarray(masks))[0]


def bbox_spec(transform) -> tuple[str, list[str]]:
    """(box format, label fields) of an albumentations ``Compose`` built with ``bbox_params``."""
    proc = getattr(transform, "processors", {}).get("bboxes")
    if proc is None:
        raise ValueError("custom_train_transforms: an albumentations Compose with bbox_params is needed (for example "
                         "A.BboxParams(format='coco', label_fields=['labels'])), so boxes and masks move together")
    return proc.params.format, list(proc.params.label_fields or [])


def to_format(boxes_xyxy: np.ndarray, fmt: str, h: int, w: int) -> np.ndarray:
    b = boxes_xyxy.astype(np.float32)
    if fmt == "pascal_voc":
        return b
    if fmt == "coco":
        return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], 1)
    scale = np.array([w, h, w, h], np.float32)
    if fmt == "albumentations":
        return b / scale
    if fmt == "yolo":
        return np.concatenate([(b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]], 1) / scale
    raise ValueError(f"custom_train_transforms: unsupported bbox format {fmt!r}")


def id_map_boxes(id_map: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tight xyxy boxes in pixel edges of each id's region in an instance-id map (``mask_extents``' convention,
    without making the [N, H, W] masks), and which ids are present. One pass over the foreground pixels."""
    n = len(ids)
    boxes = np.tile(np.array([[0, 0, 1, 1]], np.float32), (n, 1))
    if n == 0:
        return boxes, np.zeros(0, bool)
    ys, xs = np.nonzero(id_map)
    order = np.argsort(ids)
    pos = np.searchsorted(ids[order], id_map[ys, xs])
    pos = np.minimum(pos, n - 1)
    found = ids[order][pos] == id_map[ys, xs]
    k = order[pos[found]]
    ys, xs = ys[found], xs[found]
    present = np.bincount(k, minlength=n) > 0
    x1 = np.full(n, np.iinfo(np.int64).max)
    y1 = np.full(n, np.iinfo(np.int64).max)
    x2 = np.full(n, -1)
    y2 = np.full(n, -1)
    np.minimum.at(x1, k, xs)
    np.minimum.at(y1, k, ys)
    np.maximum.at(x2, k, xs)
    np.maximum.at(y2, k, ys)
    boxes[present] = np.stack([x1, y1, x2 + 1, y2 + 1], 1)[present]
    return boxes, present


def map_to_masks(id_map, ids: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W]: one mask per id of ``ids`` from an instance-id map (numpy or tensor)."""
    m = id_map.numpy() if isinstance(id_map, torch.Tensor) else np.asarray(id_map)
    if len(ids) == 0:
        return np.zeros((0, *m.shape[-2:]), np.uint8)
    return (m[None] == np.asarray(ids).astype(m.dtype)[:, None, None]).astype(np.uint8)


class InstanceDataset(Dataset):
    """Items of one split of an instance format (``instance_formats``): image, training-style targets at the
    network's resolution, and for evaluation the original-resolution targets. Instances given as an id map (formats
    whose instances do not overlap) go through augmentation as one map; per-instance masks are made once, after it."""

    def __init__(self, split: InstanceSplit, transform=None, train: bool = True, image_size: int = 640,
                 preprocess: dict | None = None, scale: float | None = None, pad_multiple: int = 32):
        self.split = split
        self.samples = split.samples
        self.transform, self.train = transform, train
        builtin = not (train or transform is not None)
        self._resize = eval_resize(image_size, preprocess, scale) if builtin else None
        self._finish = eval_finish(image_size, 0, preprocess, pad_multiple if scale else None) if builtin else None

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, idx: int) -> tuple[np.ndarray, Instances, Any]:
        sample = self.samples[idx]
        image = read_image(sample.image_path)
        return image, self.split.read_instances(sample, *image.shape[:2]), sample.image_id

    def __getitem__(self, idx: int) -> dict[str, Any]:
        image, inst, img_id = self.load(idx)
        h, w = image.shape[:2]
        item: dict[str, Any] = {"image_id": img_id, "orig_size": torch.tensor([h, w])}
        item.update(self._train_item(image, inst) if self.train else self._eval_item(image, inst))
        return item

    def _train_item(self, image: np.ndarray, inst: Instances) -> dict[str, Any]:
        h, w = image.shape[:2]
        keep = ~inst.crowd
        labels = inst.labels[keep]
        if inst.id_map is not None:
            ids = inst.ids[keep]
            boxes, _ = id_map_boxes(inst.id_map, ids)
            targets = {"mask": inst.id_map.astype(np.int32, copy=False)}
        else:
            masks = np.asarray(inst.masks)[keep]
            boxes = masks_to_boxes(masks)
            targets = {"masks": masks if len(masks) else []}
        fmt, fields = bbox_spec(self.transform)
        boxes = to_format(boxes, fmt, h, w)
        # every label field (or, without one, an extra box column) carries the instance index, so the boxes that
        # survive the transform name the masks and labels to keep
        index = np.arange(len(labels))
        if not fields:
            boxes = np.concatenate([boxes, index[:, None].astype(np.float32)], 1)
        out = self.transform(image=image, bboxes=boxes, **targets, **{f: index for f in fields})
        kept = out[fields[0]] if fields else np.asarray(out["bboxes"]).reshape(-1, 5)[:, 4]
        idx_kept = np.asarray(kept, dtype=np.int64)
        size = tuple(out["image"].shape[-2:])
        if inst.id_map is not None:  # a box the transform dropped takes its mask and label with it
            tmasks = map_to_masks(out["mask"], ids[idx_kept])
        else:
            tmasks = np.asarray(out["masks"])[idx_kept].astype(np.uint8, copy=False) if len(idx_kept) \
                else np.zeros((0, *size), np.uint8)
        tboxes, nonempty = mask_extents(tmasks)
        if not nonempty.all():
            tmasks, tboxes = tmasks[nonempty], tboxes[nonempty]
        return {"image": out["image"], "valid_size": torch.tensor(list(size)),
                "target": {"boxes": torch.from_numpy(tboxes), "labels": torch.from_numpy(labels[idx_kept][nonempty]),
                           "masks": torch.from_numpy(tmasks), "iscrowd": torch.zeros(len(tmasks), dtype=torch.bool)}}

    def _eval_item(self, image: np.ndarray, inst: Instances) -> dict[str, Any]:
        keep = ~inst.crowd
        if inst.id_map is not None:
            ids = inst.ids[keep]
            out, valid = apply_eval(self._resize, self._finish, self.transform, image,
                                    mask=inst.id_map.astype(np.int32, copy=False))
            tmasks = map_to_masks(out["mask"], ids)
        else:
            net_masks = list(np.asarray(inst.masks)[keep])
            out, valid = apply_eval(self._resize, self._finish, self.transform, image, masks=net_masks)
            tmasks = np.asarray(out["masks"]).astype(np.uint8, copy=False) if net_masks \
                else np.zeros((0, *out["image"].shape[-2:]), np.uint8)
        # training-style targets at network resolution (for the validation loss)
        tboxes, nonempty = mask_extents(tmasks)
        if not nonempty.all():
            tmasks, tboxes = tmasks[nonempty], tboxes[nonempty]
        full = inst.full_masks()
        return {"image": out["image"], "valid_size": torch.tensor([int(valid[0]), int(valid[1])]),
                "target": {"boxes": torch.from_numpy(tboxes), "labels": torch.from_numpy(inst.labels[keep][nonempty]),
                           "masks": torch.from_numpy(tmasks), "iscrowd": torch.zeros(len(tmasks), dtype=torch.bool)},
                "orig_target": {"boxes": torch.from_numpy(masks_to_boxes(full)),
                                "labels": torch.from_numpy(inst.labels), "masks": torch.from_numpy(full.astype(bool)),
                                "iscrowd": torch.from_numpy(inst.crowd)}}


def _pad_to(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2]))


def collate_instance(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stacks images, padding bottom/right to the largest in the batch when sizes differ (custom transforms that
    rescale); target masks are padded alike, boxes stay valid."""
    h = max(it["image"].shape[-2] for it in items)
    w = max(it["image"].shape[-1] for it in items)
    for it in items:
        if tuple(it["image"].shape[-2:]) != (h, w):
            it["image"] = _pad_to(it["image"], h, w)
            it["target"]["masks"] = _pad_to(it["target"]["masks"], h, w)
    batch = {"image": torch.stack([it["image"] for it in items]), "targets": [it["target"] for it in items],
             "image_id": [it["image_id"] for it in items],
             "orig_size": torch.stack([it["orig_size"] for it in items]),
             "valid_size": torch.stack([it["valid_size"] for it in items])}
    if "orig_target" in items[0]:
        batch["orig_targets"] = [it["orig_target"] for it in items]
    return batch


def instance_train_transforms(preset: str, image_size: int, preprocess: dict | None = None,
                              crop_size: int | None = None, scale: float | None = None) -> A.Compose:
    """The preset at ``image_size`` with boxes kept in step; ``crop_size``: train on random crops of that size (the
    detail of ``image_size`` at a crop's cost; evaluation stays whole at ``image_size``)."""
    bbox = A.BboxParams(format="pascal_voc", label_fields=["instance_idx"], min_area=1.0, min_visibility=0.0,
                        clip=True)
    return train_transforms(preset, image_size, ignore_index=0, bbox_params=bbox, preprocess=preprocess,
                            crop_size=crop_size, scale=scale)


class InstanceSegmentationDataModule(ModelPreprocess, pl.LightningDataModule):
    """Instance segmentation data in any format of ``autotimm.data.instance_formats``. Args (see the API reference):
    data_dir, image_size, batch_size, num_workers, augmentation_preset, custom_train_transforms (an albumentations
    ``Compose`` with ``bbox_params`` in any box format; boxes, masks and labels stay in step whatever its label
    fields), custom_val_transforms (image only), min_keypoints, min_area (COCO's annotation filters); plus
    ``crop_size`` (train on random crops of the ``image_size`` images), ``scale`` (resize every image by this factor
    instead of its longest side to ``image_size``, which is then the training window: a fixed pixel size, for
    microscopy; evaluation runs each image whole at that scale, padded to a multiple of 32),
    ``format`` (``coco``, the default; ``dsb2018``; ``instance_png``; or the dotted path of your own format module),
    ``format_options`` (the format's own ``load_split`` arguments: ``dsb2018``'s ``class_map`` / ``skip_bad``,
    ``instance_png``'s ``encoding`` / folders...), split names, ``skip_corrupt`` and ``mean`` / ``std`` /
    ``interpolation`` (as ``SegmentationDataModule``: by default the attached model's preprocessing).
    ``category_ids[label]`` maps contiguous labels back to the dataset's category ids."""

    task_kind = "instance"  # the models it feeds (``InstanceSegmentor.task_kind``)

    def __init__(self, data_dir: str | Path, image_size: int = 640, batch_size: int = 4, num_workers: int = 4,
                 augmentation_preset: str = "default", custom_train_transforms: Any = None,
                 custom_val_transforms: Any = None, min_keypoints: int = 0, min_area: float = 0.0,
                 train_split: str = "train", val_split: str = "val", test_split: str | None = None,
                 num_classes: int | None = None, persistent_workers: bool = True, skip_corrupt: bool = False,
                 mean: list[float] | None = None, std: list[float] | None = None, interpolation: str | None = None,
                 format: str = "coco", format_options: dict | None = None, crop_size: int | None = None,
                 scale: float | None = None):
        super().__init__()
        self._init_preprocess(mean, std, interpolation)
        if augmentation_preset not in PRESETS:
            raise ValueError(f"augmentation_preset: unknown {augmentation_preset!r}; valid: {list(PRESETS)}")
        self.format = str(format)
        self.format_module = resolve_instance_format(self.format, INSTANCE_FORMATS)
        self.format_options = dict(format_options or {})
        if self.format == "coco":
            self.format_options.setdefault("min_area", min_area)
            self.format_options.setdefault("min_keypoints", min_keypoints)
        elif min_area or min_keypoints:
            raise ValueError(f"min_area / min_keypoints filter COCO annotations; format={self.format!r} has none "
                             f"(its own options go in format_options)")
        self.data_dir = Path(data_dir)
        self.image_size, self.batch_size, self.num_workers = int(image_size), batch_size, num_workers
        if crop_size is not None and not 16 <= int(crop_size) <= int(image_size):
            raise ValueError(f"crop_size must be between 16 and image_size ({image_size}), got {crop_size}")
        self.crop_size = int(crop_size) if crop_size is not None else None
        if scale is not None and not float(scale) > 0:
            raise ValueError(f"scale must be > 0 (the factor every image is resized by), got {scale}")
        self.scale = float(scale) if scale is not None else None
        self.augmentation_preset = augmentation_preset
        self.custom_train_transforms, self.custom_val_transforms = custom_train_transforms, custom_val_transforms
        self.min_keypoints, self.min_area = min_keypoints, min_area
        self.train_split, self.val_split, self.test_split = train_split, val_split, test_split
        self.num_classes = num_classes
        self.persistent_workers = persistent_workers
        self.skip_corrupt = skip_corrupt
        self.skipped_corrupt: list[str] = []
        self.train_dataset = self.val_dataset = self.test_dataset = None
        self.test_split_used: str | None = None  # the split test/* metrics come from (set up for "test")
        self.test_on_val = False  # no labelled test split: test/* metrics are the val split's
        self._eval_datasets: dict[str, InstanceDataset] = {}
        self.category_ids: list[int] | None = None
        self.class_names: list[str] | None = None

    def _dataset(self, split: str, train: bool) -> InstanceDataset:
        if not self.data_dir.is_dir():
            raise DatasetLayoutError(f"data_dir {self.data_dir} does not exist (format={self.format!r})")
        data = self.format_module.load_split(self.data_dir, split, **self.format_options)
        if self.skip_corrupt:
            self.skipped_corrupt += drop_corrupt(data, f"{self.format} split {split!r}")
        tf = (self.custom_train_transforms or instance_train_transforms(self.augmentation_preset, self.image_size,
                                                                        self.preprocess, self.crop_size, self.scale)) \
            if train else self.custom_val_transforms
        ds = InstanceDataset(data, tf, train=train, image_size=self.image_size, preprocess=self.preprocess,
                             scale=self.scale)
        where = f"{self.format} split {split!r} at {self.data_dir}"
        if self.category_ids is None:
            self.category_ids, self.class_names = list(data.category_ids), list(data.class_names)
        elif list(data.category_ids) != self.category_ids:
            raise ValueError(f"{where}: categories {data.category_ids} differ from the other split's "
                             f"{self.category_ids}")
        if self.num_classes is not None and len(data.category_ids) != self.num_classes:
            raise ValueError(f"{where}: {len(data.category_ids)} categories but num_classes={self.num_classes}")
        log.info("%s: %d images", where, len(ds))
        return ds

    def eval_dataset(self, split: str) -> InstanceDataset:
        """``split``'s images as validation sees them (whole, the validation transform, original-size targets),
        whatever the split: e.g. training images for ``ScoreThresholdCalibration``. Built once per split."""
        if split not in self._eval_datasets:
            self._sync_preprocess()
            self._eval_datasets[split] = self.val_dataset if split == self.val_split and self.val_dataset is not None \
                else self._dataset(split, False)
        return self._eval_datasets[split]

    def setup(self, stage: str | None = None):
        self._sync_preprocess()
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = self._dataset(self.train_split, True)
        if stage in (None, "fit", "validate") and self.val_dataset is None:
            self.val_dataset = self._dataset(self.val_split, False)
        if stage in (None, "test", "predict") and self.test_dataset is None:
            split, self.test_dataset = resolve_test_split(lambda name: self._dataset(name, False), self.test_split,
                                                          self.val_split, f"instance data at {self.data_dir}", log)
            self.test_split_used = split
            self.test_on_val = split == self.val_split and not self.test_split

    def _loader(self, ds, shuffle):
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=collate_instance,
                          persistent_workers=self.persistent_workers and self.num_workers > 0)

    def train_dataloader(self):
        return self._loader(self.train_dataset, True)

    def val_dataloader(self):
        return self._loader(self.val_dataset, False)

    def test_dataloader(self):
        return self._loader(self.test_dataset, False)

    def predict_dataloader(self):
        return self._loader(self.test_dataset, False)


class ShapesInstanceDataModule(InstanceSegmentationDataModule):
    """The generated shapes in COCO layout (``<root>/<split>/images`` + ``annotations/instances_<split>.json``).
    ``min_shapes``, ``max_shapes`` and ``radius`` (fractions of ``source_size``) make the scenes dense
    (``dataset=shapes_dense``: 150-400 small shapes per 256 px image; ``autotimm.data.shapes.generate_shapes``)."""

    def __init__(self, data_dir: str | Path, num_train: int = 800, num_val: int = 160, source_size: int = 128,
                 seed: int = 0, image_size: int = 128, min_shapes: int = 1, max_shapes: int = 4,
                 radius: tuple[float, float] | list[float] = (0.08, 0.2), **kwargs):
        super().__init__(data_dir=data_dir, image_size=image_size, **kwargs)
        self.gen_kwargs = dict(num_train=num_train, num_val=num_val, image_size=source_size, seed=seed,
                               min_shapes=min_shapes, max_shapes=max_shapes, radius=tuple(radius))

    def prepare_data(self):
        from .shapes import generate_shapes

        generate_shapes(self.data_dir, **self.gen_kwargs)

    def setup(self, stage: str | None = None):
        self.prepare_data()
        super().setup(stage)
