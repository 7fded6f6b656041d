"""On-disk formats for semantic segmentation, one module each."""

from . import camvid, cityscapes, coco, png, voc
from .base import DatasetLayoutError, Sample, SplitData

FORMATS = {"png": png, "coco": coco, "cityscapes": cityscapes, "voc": voc, "camvid": camvid}

__all__ = ["FORMATS", "DatasetLayoutError", "Sample", "SplitData"]
