"""Losses. ``conf/loss/<name>.yaml`` targets the class registered under that name in ``LOSSES``."""

from .segmentation import (
    CombinedSegmentationLoss,
    CrossEntropySegmentationLoss,
    DiceLoss,
    FocalLossPixelwise,
    TverskyLoss,
)

LOSSES = {
    "ce": CrossEntropySegmentationLoss,
    "dice": DiceLoss,
    "focal": FocalLossPixelwise,
    "tversky": TverskyLoss,
    "combined": CombinedSegmentationLoss,
}

__all__ = [
    "LOSSES",
    "CombinedSegmentationLoss",
    "CrossEntropySegmentationLoss",
    "DiceLoss",
    "FocalLossPixelwise",
    "TverskyLoss",
]
