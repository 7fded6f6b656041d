"""SegFormer's all-MLP decoder (Xie et al. 2021): each level linearly projected to ``embed_dim``, upsampled to the
finest level (stride 4), concatenated, fused by a 1x1 conv (BN, ReLU) and classified."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .aspp import conv_bn_relu
from .levels import pick_levels


class SegFormerHead(nn.Module):
    """Args:
        in_channels / reductions: the backbone's channels and strides (levels at stride >= ``min_stride`` are used).
        num_classes: output classes.
        embed_dim: width of the per-level projections and the fusion (256 for MiT-B0/B1, 768 for B2-B5).
        min_stride: the finest level read (4, as in the paper).
        dropout: dropout before the classifier (0.1 in the paper).
    Returns logits at the finest level's stride (4).
    """

    def __init__(self, in_channels: int | Sequence[int], num_classes: int, reductions: Sequence[int] | None = None,
                 embed_dim: int = 256, min_stride: int = 4, dropout: float = 0.1):
        super().__init__()
        self.levels, chans, self.strides = pick_levels(in_channels, reductions, min_stride)
        # a per-pixel linear layer is a 1x1 conv
        self.proj = nn.ModuleList(nn.Conv2d(c, embed_dim, 1) for c in chans)
        self.fuse = conv_bn_relu(len(chans) * embed_dim, embed_dim, 1)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(embed_dim, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        feats = [features[i] for i in self.levels]
        size = feats[0].shape[-2:]
        outs = [F.interpolate(p(f), size=size, mode="bilinear", align_corners=False) if f.shape[-2:] != size
                else p(f) for p, f in zip(self.proj, feats)]
        return self.classifier(self.dropout(self.fuse(torch.cat(outs[::-1], dim=1))))
