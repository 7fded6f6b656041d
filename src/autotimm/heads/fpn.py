"""Feature pyramid on any timm backbone (torchvision's FeaturePyramidNetwork): P3-P5 plus P6/P7 as in FCOS, or
P2-P5 plus a max-pooled P6 as in Mask R-CNN."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

EXTRA_BLOCKS = ("p6p7", "maxpool", None)


class FPN(nn.Module):
    """Args:
        in_channels / reductions: the backbone's ``channels`` and ``reductions``; its levels at strides >=
            ``min_stride`` (one per stride, the deepest of each) feed the pyramid, up to ``max_levels`` of them
            (the deepest; default 3 from stride 8 on: P3-P5).
        out_channels: FPN width.
        extra_levels: add the extra coarse levels of ``extra_block`` (``False``: none).
        min_stride: the finest stride taken from the backbone (8: FCOS's P3; 4: Mask R-CNN's P2).
        extra_block: ``"p6p7"`` (P6 and P7 by stride-2 convs from P5, FCOS) or ``"maxpool"`` (P6 by max-pooling P5,
            Mask R-CNN).
        max_levels: backbone levels used at most (default: 3 from stride 8, 4 from stride 4).
    ``forward`` returns an ``OrderedDict`` ``{"p3": ..., "p4": ..., ...}``; ``strides`` lists each level's stride and
    ``names`` their names (``p<log2 stride>``).
    """

    def __init__(self, in_channels: Sequence[int], reductions: Sequence[int], out_channels: int = 256,
                 extra_levels: bool = True, min_stride: int = 8, extra_block: str | None = "p6p7",
                 max_levels: int | None = None):
        super().__init__()
        if extra_block not in EXTRA_BLOCKS:
            raise ValueError(f"extra_block: unknown {extra_block!r}; valid: {list(EXTRA_BLOCKS)}")
        deepest = {int(r): i for i, r in enumerate(reductions) if r >= min_stride}  # last index of each stride
        max_levels = max_levels or (4 if min_stride <= 4 else 3)
        picks = sorted(deepest.values())[-max_levels:]
        if not picks:
            raise ValueError(f"FPN needs backbone features at stride >= {min_stride}, got strides {list(reductions)}")
        self.indices = picks
        self.strides = [int(reductions[i]) for i in picks]
        extra = None
        if extra_levels and extra_block == "p6p7":
            extra = LastLevelP6P7(out_channels, out_channels)
            self.strides += [self.strides[-1] * 2, self.strides[-1] * 4]
        elif extra_levels and extra_block == "maxpool":
            extra = LastLevelMaxPool()
            self.strides += [self.strides[-1] * 2]
        self.fpn = FeaturePyramidNetwork([int(in_channels[i]) for i in picks], out_channels, extra_blocks=extra)
        self.names = [f"p{int(s).bit_length() - 1}" for s in self.strides]
        self.out_channels = out_channels

    def forward(self, features: Sequence[torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        x = OrderedDict((str(k), features[i]) for k, i in enumerate(self.indices))
        out = self.fpn(x)
        return OrderedDict(zip(self.names, out.values()))


class TopDownLevel(nn.Module):
    """One finer pyramid level by the FPN's top-down rule alone: a 1x1 lateral conv of a backbone feature plus the
    next-coarser pyramid level upsampled to it (nearest), without the FPN's 3x3 output conv. For ROI heads that
    want stride-4 detail (Mask R-CNN pools its masks from P2) beside a detector whose pyramid starts at P3 (FCOS):
    torchvision's ``FeaturePyramidNetwork`` would add the level with its 3x3 output conv, which at stride 4 costs
    more than the rest of a light pyramid (0.68 GFLOPs per 256 px window at 96 channels against 0.25 for P3-P7),
    while the lateral costs 0.03 (the ROI head's own convs follow).

    Args:
        in_channels: the backbone feature's channels.
        out_channels: the pyramid's width.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.lateral = nn.Conv2d(int(in_channels), int(out_channels), 1)

    def forward(self, feature: torch.Tensor, coarser: torch.Tensor) -> torch.Tensor:
        return self.lateral(feature) + F.interpolate(coarser, size=feature.shape[-2:], mode="nearest")
