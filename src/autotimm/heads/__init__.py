"""Segmentation heads. ``conf/head/<name>.yaml`` targets the class of the same name here."""

from .aspp import ASPP
from .deeplabv3plus import DeepLabV3PlusHead
from .fcn import FCNHead

HEADS = {"deeplabv3plus": DeepLabV3PlusHead, "fcn": FCNHead}

__all__ = ["ASPP", "HEADS", "DeepLabV3PlusHead", "FCNHead"]
