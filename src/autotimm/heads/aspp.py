"""Atrous Spatial Pyramid Pooling (DeepLabV3), with the depthwise-separable convs of DeepLabV3+."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1, separable: bool = False) -> nn.Sequential:
    """Conv-BN-ReLU; ``separable`` makes a kxk conv depthwise (dilated) followed by a pointwise conv."""
    pad = dilation * (kernel // 2)
    if separable and kernel > 1:
        return nn.Sequential(
            nn.Conv2d(cin, cin, kernel, padding=pad, dilation=dilation, groups=cin, bias=False),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class _ImagePooling(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        # no BatchNorm: a 1x1 pooled map has one value per channel, BN would fail at batch size 1
        self.conv = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv(F.adaptive_avg_pool2d(x, 1)))
        return y.expand(-1, -1, x.shape[-2], x.shape[-1])


class ASPP(nn.Module):
    """ASPP: a 1x1 branch, one 3x3 branch per atrous rate, image pooling; concatenated and projected.

    Args:
        in_channels: channels of the input feature map.
        out_channels: channels of every branch and of the output.
        atrous_rates: dilation rates; (6, 12, 18) at output stride 16, doubled at 8 (see ``rates_for_stride``).
        separable: depthwise-separable 3x3 branches (DeepLabV3+), far cheaper than dense ones.
        dropout: dropout after the projection.
    """

    def __init__(self, in_channels: int, out_channels: int = 256, atrous_rates: Sequence[int] = (6, 12, 18),
                 separable: bool = True, dropout: float = 0.1):
        super().__init__()
        self.atrous_rates = tuple(int(r) for r in atrous_rates)
        branches = [conv_bn_relu(in_channels, out_channels, 1)]
        branches += [conv_bn_relu(in_channels, out_channels, 3, r, separable) for r in self.atrous_rates]
        branches.append(_ImagePooling(in_channels, out_channels))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(out_channels * len(branches), out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([b(x) for b in self.branches], dim=1))


def rates_for_stride(output_stride: int, base: Sequence[int] = (6, 12, 18)) -> tuple[int, ...]:
    """DeepLab's rates are defined at output stride 16: scale them so they cover the same image context."""
    return tuple(max(1, int(round(r * 16 / output_stride))) for r in base)
