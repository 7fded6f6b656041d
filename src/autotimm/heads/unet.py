"""U-Net decoder (Ronneberger et al. 2015; smp's ``UnetDecoder`` over a timm encoder): from the deepest level up,
each stage upsamples 2x, concatenates the next shallower level (the skip) and runs two 3x3 conv-BN-ReLU, ending at
the shallowest level's stride (2 on CNNs with a stride-2 stem, 4 on ConvNeXts and ViTs through the simple pyramid).

Chosen over the Panoptic-FPN semantic branch because top-down FPN fusion is already in ``UPerNetHead``; the U-Net's
concatenated full-resolution skips are the design that differs, and what thin structures (poles, signs) need."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .aspp import conv_bn_relu
from .levels import pick_levels


class UNetHead(nn.Module):
    """Args:
        in_channels / reductions: the backbone's channels and strides (levels at stride >= ``min_stride``).
        num_classes: output classes.
        decoder_channels: width of the first (deepest) stage; each later stage halves it, down to ``min_channels``.
        min_channels: the narrowest stage.
        min_stride: the finest level read (1: all of them).
    Returns logits at the finest level's stride.
    """

    def __init__(self, in_channels: int | Sequence[int], num_classes: int, reductions: Sequence[int] | None = None,
                 decoder_channels: int = 256, min_channels: int = 16, min_stride: int = 1):
        super().__init__()
        self.levels, chans, self.strides = pick_levels(in_channels, reductions, min_stride)
        stages, ch = [], chans[-1]
        for i, skip in enumerate(reversed(chans[:-1])):  # deep to shallow
            out = max(min_channels, decoder_channels // 2**i)
            stages.append(nn.Sequential(conv_bn_relu(ch + skip, out, 3), conv_bn_relu(out, out, 3)))
            ch = out
        self.stages = nn.ModuleList(stages)
        self.classifier = nn.Conv2d(ch, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        feats = [features[i] for i in self.levels]
        x = feats[-1]
        for stage, skip in zip(self.stages, reversed(feats[:-1])):  # a loop over the pyramid levels
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = stage(torch.cat([x, skip], dim=1))
        return self.classifier(x)
