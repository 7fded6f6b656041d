"""On-disk formats for instance segmentation, one module each (``base.py``: the contract); a user's own format is
one more module, named by its dotted path."""

from . import coco, dsb2018, instance_png
from .base import Instances, InstanceSample, InstanceSplit, resolve_instance_format

INSTANCE_FORMATS = {"coco": coco, "dsb2018": dsb2018, "instance_png": instance_png}

__all__ = ["INSTANCE_FORMATS", "InstanceSample", "InstanceSplit", "Instances", "resolve_instance_format"]
