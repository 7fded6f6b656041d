"""Label mapping with a dense lookup table, and label validation."""

from __future__ import annotations

import numpy as np

_UNMAPPED = np.iinfo(np.int64).min


class LabelMapper:
    """Maps raw label values to class ids through one lookup table built up front.

    ``strict``: a raw value the mapping does not list is an error naming the file (nothing is silently
    relabelled); otherwise it becomes ``ignore_index``. ``ignore_index`` itself always maps to itself unless listed.
    """

    def __init__(self, mapping: dict[int, int], ignore_index: int, strict: bool = True):
        mapping = {int(k): int(v) for k, v in mapping.items()}
        mapping.setdefault(int(ignore_index), int(ignore_index))
        keys = np.fromiter(mapping.keys(), dtype=np.int64)
        self.offset = int(min(keys.min(), 0))
        self.size = int(keys.max()) - self.offset + 1
        self.lut = np.full(self.size, _UNMAPPED if strict else ignore_index, dtype=np.int64)
        self.lut[keys - self.offset] = np.fromiter(mapping.values(), dtype=np.int64)
        self.ignore_index, self.strict = ignore_index, strict

    def __call__(self, raw: np.ndarray, source: str) -> np.ndarray:
        idx = raw.astype(np.int64) - self.offset
        outside = (idx < 0) | (idx >= self.size)
        if outside.any():
            if self.strict:
                raise ValueError(f"{source}: label values {np.unique(raw[outside])[:20].tolist()} are not in the "
                                 f"class mapping")
            idx = np.where(outside, 0, idx)
            out = self.lut[idx]
            out[outside] = self.ignore_index
        else:
            out = self.lut[idx]
        if self.strict:
            unmapped = out == _UNMAPPED
            if unmapped.any():
                raise ValueError(f"{source}: label values {np.unique(raw[unmapped])[:20].tolist()} are not in the "
                                 f"class mapping")
        return out


def check_labels(mask: np.ndarray, num_classes: int | None, ignore_index: int, source: str) -> None:
    if num_classes is None:
        return
    bad = ((mask < 0) | (mask >= num_classes)) & (mask != ignore_index)
    if bad.any():
        raise ValueError(f"{source}: mask values {np.unique(mask[bad])[:20].tolist()} are >= num_classes="
                         f"{num_classes} (or negative) and not ignore_index={ignore_index}; fix num_classes or give "
                         f"a class_mapping")
