"""Heads. ``conf/head/<name>.yaml`` targets the class of the same name here.

Semantic heads take ``in_channels`` (per level), ``num_classes`` and ``reductions``; instance mask heads follow
``RoIMaskHead`` (see ``mask.py``).
"""

from .aspp import ASPP
from .deeplabv3plus import DeepLabV3PlusHead
from .fcn import FCNHead
from .fcos import FCOSHead
from .fpn import FPN
from .mask import MaskHead, RoIMaskHead
from .mask_shared import SharedMaskHead

HEADS = {"deeplabv3plus": DeepLabV3PlusHead, "fcn": FCNHead}  # semantic heads selectable by head_type

__all__ = ["ASPP", "FPN", "HEADS", "DeepLabV3PlusHead", "FCNHead", "FCOSHead", "MaskHead", "RoIMaskHead",
           "SharedMaskHead"]
