"""On-disk formats for semantic segmentation, one module each."""

from . import ade20k, camvid, cityscapes, coco, png, voc
from .base import DatasetLayoutError, Sample, SplitData

FORMATS = {"png": png, "coco": coco, "cityscapes": cityscapes, "voc": voc, "camvid": camvid, "ade20k": ade20k}

__all__ = ["FORMATS", "DatasetLayoutError", "Sample", "SplitData"]
