"""Feature pyramid on any timm backbone (torchvision's FeaturePyramidNetwork), P3-P5 plus P6/P7 as in FCOS."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn as nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7


class FPN(nn.Module):
    """Args:
        in_channels / reductions: the backbone's ``channels`` and ``reductions``; levels at strides 8, 16 and 32
            (the deepest three from stride 8 on) feed the pyramid.
        out_channels: FPN width.
        extra_levels: P6, P7 from P5 (FCOS) when True.
    ``forward`` returns an ``OrderedDict`` ``{"p3": ..., "p4": ..., ...}``; ``strides`` lists each level's stride.
    """

    def __init__(self, in_channels: Sequence[int], reductions: Sequence[int], out_channels: int = 256,
                 extra_levels: bool = True):
        super().__init__()
        picks = [i for i, r in enumerate(reductions) if r >= 8][-3:]
        if not picks:
            raise ValueError(f"FPN needs backbone features at stride >= 8, got strides {list(reductions)}")
        self.indices = picks
        self.strides = [int(reductions[i]) for i in picks]
        extra = LastLevelP6P7(out_channels, out_channels) if extra_levels else None
        self.fpn = FeaturePyramidNetwork([int(in_channels[i]) for i in picks], out_channels, extra_blocks=extra)
        if extra_levels:
            self.strides += [self.strides[-1] * 2, self.strides[-1] * 4]
        self.names = [f"p{int(round(torch.log2(torch.tensor(float(s))).item()))}" for s in self.strides]
        self.out_channels = out_channels

    def forward(self, features: Sequence[torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        x = OrderedDict((str(k), features[i]) for k, i in enumerate(self.indices))
        out = self.fpn(x)
        return OrderedDict(zip(self.names, out.values()))
