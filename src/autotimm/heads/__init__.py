"""Heads. ``conf/head/<name>.yaml`` targets the class of the same name here."""

from .aspp import ASPP
from .deeplabv3plus import DeepLabV3PlusHead
from .fcn import FCNHead
from .fcos import FCOSHead
from .fpn import FPN
from .mask import MaskHead

HEADS = {"deeplabv3plus": DeepLabV3PlusHead, "fcn": FCNHead}  # semantic heads selectable by head_type

__all__ = ["ASPP", "FPN", "HEADS", "DeepLabV3PlusHead", "FCNHead", "FCOSHead", "MaskHead"]
