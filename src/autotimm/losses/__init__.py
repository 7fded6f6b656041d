"""Losses. ``conf/loss/<name>.yaml`` targets the class registered under that name in ``LOSSES``."""

from .detection import FCOSLoss, InstanceSegmentationLoss
from .mask import MaskLoss
from .segmentation import (
    CombinedSegmentationLoss,
    CrossEntropySegmentationLoss,
    DiceLoss,
    FocalLossPixelwise,
    LovaszSoftmaxLoss,
    OhemCrossEntropyLoss,
    TverskyLoss,
)

LOSSES = {  # semantic losses selectable by loss_type
    "ce": CrossEntropySegmentationLoss,
    "dice": DiceLoss,
    "focal": FocalLossPixelwise,
    "tversky": TverskyLoss,
    "combined": CombinedSegmentationLoss,
    "ohem": OhemCrossEntropyLoss,
    "lovasz": LovaszSoftmaxLoss,
}

__all__ = ["LOSSES", "CombinedSegmentationLoss", "CrossEntropySegmentationLoss", "DiceLoss", "FCOSLoss",
           "FocalLossPixelwise", "InstanceSegmentationLoss", "LovaszSoftmaxLoss", "MaskLoss", "OhemCrossEntropyLoss",
           "TverskyLoss"]
