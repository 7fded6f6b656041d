"""UPerNet head (Xiao et al. 2018, "Unified Perceptual Parsing"), as mmseg's ``UPerHead``: a pyramid pooling
module (PSPNet) on the deepest level, an FPN top-down path over all levels, every level upsampled to the finest and
fused by a 3x3 conv before the classifier."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .aspp import conv_bn_relu
from .levels import pick_levels


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling: average-pool to each of ``scales`` bins, 1x1 conv, upsample, concatenate with the
    input, 3x3 conv. The 1x1-bin branch has no BatchNorm (one value per channel: it would fail at batch size 1)."""

    def __init__(self, in_channels: int, channels: int, scales: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        self.scales = tuple(int(s) for s in scales)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels, channels, 1), nn.ReLU(inplace=True)) if s == 1
            else conv_bn_relu(in_channels, channels, 1) for s in self.scales)
        self.bottleneck = conv_bn_relu(in_channels + len(self.scales) * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(b(F.adaptive_avg_pool2d(x, s)), size=size, mode="bilinear", align_corners=False)
                  for s, b in zip(self.scales, self.branches)]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))


class UPerNetHead(nn.Module):
    """Args:
        in_channels / reductions: the backbone's channels and strides (levels at stride >= ``min_stride`` are used).
        num_classes: output classes.
        channels: width of the PPM, the FPN and the fusion (512 in mmseg's UPerNet configs).
        pool_scales: PPM bins.
        min_stride: the finest level read (4: the stride-2 stem level of CNNs is skipped).
        dropout: dropout before the classifier.
    Returns logits at the finest level's stride (4 on CNNs, ConvNeXts and ViTs through the simple pyramid).
    """

    def __init__(self, in_channels: int | Sequence[int], num_classes: int, reductions: Sequence[int] | None = None,
                 channels: int = 256, pool_scales: Sequence[int] = (1, 2, 3, 6), min_stride: int = 4,
                 dropout: float = 0.1):
        super().__init__()
        self.levels, chans, self.strides = pick_levels(in_channels, reductions, min_stride)
        self.ppm = PyramidPooling(chans[-1], channels, pool_scales)
        self.lateral = nn.ModuleList(conv_bn_relu(c, channels, 1) for c in chans[:-1])
        self.fpn = nn.ModuleList(conv_bn_relu(channels, channels, 3) for _ in chans[:-1])
        self.fuse = conv_bn_relu(len(chans) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        feats = [features[i] for i in self.levels]
        laterals = [lat(f) for lat, f in zip(self.lateral, feats[:-1])] + [self.ppm(feats[-1])]
        for i in range(len(laterals) - 1, 0, -1):  # top-down: a loop over the pyramid levels
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                              mode="bilinear", align_corners=False)
        outs = [conv(x) for conv, x in zip(self.fpn, laterals[:-1])] + [laterals[-1]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in outs[1:]]
        return self.classifier(self.dropout(self.fuse(torch.cat(outs, dim=1))))
