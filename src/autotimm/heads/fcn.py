"""FCN head (Long et al. 2015, torchvision's FCNHead): a 3x3 conv block and a 1x1 classifier on the deepest map."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class FCNHead(nn.Module):
    """Args:
        in_channels: channels of the deepest feature (or all levels; the last is used).
        num_classes: output classes.
        channels: hidden width (default ``in_channels // 4``, at least 32).
        dropout: dropout before the classifier.
        reductions: accepted for a uniform head interface; unused.
    Returns logits at the deepest feature's resolution; the task upsamples to the input.
    """

    def __init__(self, in_channels: int | Sequence[int], num_classes: int, channels: int | None = None,
                 dropout: float = 0.1, reductions: Sequence[int] | None = None):
        super().__init__()
        cin = int(in_channels) if isinstance(in_channels, int) else int(list(in_channels)[-1])
        hidden = channels or max(32, cin // 4)
        self.block = nn.Sequential(
            nn.Conv2d(cin, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(hidden, num_classes, 1),
        )

    def forward(self, features: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        x = features if isinstance(features, torch.Tensor) else features[-1]
        return self.block(x)
