"""What an on-disk format provides: the samples of a split, how to read a mask, and its label mapping."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class Sample:
    image_path: Path
    image_id: Any
    mask_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class SplitData:
    """samples; ``read_mask(sample) -> int array [H,W]`` of raw label values; ``mapping`` raw -> class id.

    ``strict_mapping``: raw values missing from ``mapping`` are an error (user mappings) rather than
    ``ignore_index`` (documented format mappings such as Cityscapes labelId -> trainId).
    """

    samples: list[Sample]
    read_mask: Callable[[Sample], np.ndarray]
    mapping: dict[int, int] | None = None
    strict_mapping: bool = True
    class_names: list[str] | None = None


class DatasetLayoutError(FileNotFoundError):
    """The data folder is missing or is not in the layout of the chosen format."""


def require_dir(path: Path, what: str, fmt: str) -> Path:
    if not path.is_dir():
        raise DatasetLayoutError(f"format={fmt!r}: expected {what} at {path}, which does not exist")
    return path


def read_mask_file(sample: Sample) -> np.ndarray:
    """Single-channel class-id PNG. Palette ('P') images give their palette indices, never the colours."""
    path = sample.mask_path
    try:
        with Image.open(path) as im:
            if im.mode in ("P", "L", "I", "I;16", "I;16B", "I;16L", "1"):
                arr = np.asarray(im)
            else:
                raise ValueError(f"mask {path}: expected a single-channel (L/P/I) PNG of class ids, got mode "
                                 f"{im.mode!r}; convert colour masks to class ids first")
    except (OSError, SyntaxError) as e:
        raise ValueError(f"mask {path}: cannot read it ({e})") from e
    return arr.astype(np.int64)


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def resolve_inside(folder: Path, file_name: str, where: str) -> Path:
    """``folder / file_name``, refusing names from a dataset file (``../``, absolute paths, links) that lead outside
    ``folder``."""
    path = (folder / file_name).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise ValueError(f"{where}: file_name {file_name!r} points outside the image folder {folder}")
    return path


def resolve_test_split(load, test_split: str | None, val_split: str, where: str, log=None):
    """``(split name, dataset)`` for the test stage: ``test_split`` when given; else the data's own labelled
    ``test`` split when the format finds one on disk; else ``val_split``, said in the log (and by the data module's
    ``test_on_val``, which ``train.py`` / ``eval.py`` write into ``metrics.json``)."""
    if test_split:
        return test_split, load(test_split)
    try:
        return "test", load("test")
    except DatasetLayoutError as e:
        if log is not None:
            log.warning("%s: no labelled test split (%s): test/* metrics are computed on the %r split", where,
                        str(e).splitlines()[0], val_split)
        return val_split, load(val_split)
