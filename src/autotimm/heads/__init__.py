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
from .segformer import SegFormerHead
from .unet import UNetHead
from .upernet import PyramidPooling, UPerNetHead

# the built-in semantic heads, selectable by head_type; a head of your own needs no entry here (head= / a YAML)
HEADS = {"deeplabv3plus": DeepLabV3PlusHead, "fcn": FCNHead, "segformer": SegFormerHead, "unet": UNetHead,
         "upernet": UPerNetHead}

__all__ = ["ASPP", "FPN", "HEADS", "DeepLabV3PlusHead", "FCNHead", "FCOSHead", "MaskHead", "PyramidPooling",
           "RoIMaskHead", "SegFormerHead", "SharedMaskHead", "UNetHead", "UPerNetHead"]
