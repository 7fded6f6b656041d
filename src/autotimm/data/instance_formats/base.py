"""What an instance-segmentation format provides: per image, its path and its instances (masks and labels).

A format is a module with ``load_split(root, split, **options) -> InstanceSplit``; ``InstanceSegmentationDataModule
(format=...)`` takes a registered name (``coco``, ``dsb2018``, ``instance_png``) or the dotted path of a user's own
module (one more file).

Instances come in one of two forms. ``masks [N,H,W]`` may overlap (COCO). An ``id_map [H,W]`` (0 = background, each
instance one value, listed in ``ids``) is the compact form of instances that do not overlap (DSB2018's nuclei,
Cityscapes-style instance maps): augmentation then moves one map instead of N full-size masks, and the per-instance
masks are made once, at the network's resolution.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..formats.base import DatasetLayoutError


@dataclass
class InstanceSample:
    image_path: Path
    image_id: Any
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Instances:
    """One image's instances: ``labels`` int64 [N] (0..C-1), ``crowd`` bool [N], and either ``masks`` uint8/bool
    [N,H,W] or ``id_map`` [H,W] (integer, 0 = background) with ``ids`` [N] (each instance's value in the map)."""

    labels: np.ndarray
    crowd: np.ndarray
    masks: np.ndarray | None = None
    id_map: np.ndarray | None = None
    ids: np.ndarray | None = None

    def __post_init__(self):
        self.labels = np.asarray(self.labels, np.int64).reshape(-1)
        self.crowd = np.asarray(self.crowd, bool).reshape(-1)
        if (self.masks is None) == (self.id_map is None):
            raise ValueError("Instances: give either masks [N,H,W] or id_map [H,W] with ids [N]")
        n = len(self.masks) if self.masks is not None else len(np.asarray(self.ids).reshape(-1))
        if self.id_map is not None:
            self.ids = np.asarray(self.ids).reshape(-1)
        if not len(self.labels) == len(self.crowd) == n:
            raise ValueError(f"Instances: {n} instances but {len(self.labels)} labels and {len(self.crowd)} crowd "
                             f"flags")

    def __len__(self) -> int:
        return len(self.labels)

    def full_masks(self) -> np.ndarray:
        """uint8 [N,H,W] (made from the id map when that is the form)."""
        if self.masks is not None:
            return np.asarray(self.masks, np.uint8)
        return (self.id_map[None] == self.ids[:, None, None]).astype(np.uint8)


@dataclass
class InstanceSplit:
    """``samples``; ``read_instances(sample, height, width) -> Instances`` (the image's size, to check against);
    ``class_names`` and ``category_ids`` (label -> the dataset's category id) in label order; ``extra`` for the
    format's own objects (COCO's index)."""

    samples: list[InstanceSample]
    read_instances: Callable[[InstanceSample, int, int], Instances]
    class_names: list[str]
    category_ids: list[int]
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_instance_format(name: str, registry: dict[str, ModuleType]) -> ModuleType:
    """A registered format, or the (dotted) name of an importable module with ``load_split`` (a user's own)."""
    if name in registry:
        return registry[name]
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        raise ValueError(f"format: unknown {name!r} ({e}); valid: {sorted(registry)}, or the module name of your own "
                         f"format (a module with load_split(root, split, **options) on the Python path)") from e
    if not callable(getattr(module, "load_split", None)):
        raise ValueError(f"format: module {name!r} has no load_split(root, split, **options)")
    return module


def require_split_dir(path: Path, what: str, fmt: str) -> Path:
    if not path.is_dir():
        raise DatasetLayoutError(f"format={fmt!r}: expected {what} at {path}, which does not exist")
    return path
