"""DeepLabV3+ head (Chen et al. 2018): ASPP on the deepest feature, a decoder fed by the stride-4 feature."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .aspp import ASPP, conv_bn_relu, rates_for_stride


def _as_list(x: int | Sequence[int]) -> list[int]:
    return [int(x)] if isinstance(x, int) else [int(v) for v in x]


class DeepLabV3PlusHead(nn.Module):
    """DeepLabV3+ decoder.

    Args:
        in_channels: channels of the backbone features (all levels, shallow to deep) or of the deepest one.
        num_classes: output classes.
        reductions: stride of each feature; picks the low-level (stride-4) feature and the ASPP rates. Without it
            the first feature is the low-level one and the deepest is taken to be at stride 32.
        aspp_channels: ASPP width.
        decoder_channels: decoder width.
        low_level_channels: width of the projected low-level skip (48 in the paper).
        atrous_rates: explicit ASPP rates; by default (6, 12, 18) scaled to the deepest feature's stride.
        separable: depthwise-separable ASPP and decoder convs, as in the paper.
        dropout: ASPP dropout.
    Returns logits at the low-level feature's resolution (stride 4); the task upsamples to the input.

    ``preferred_output_stride = 16``: with ``backbone.output_stride: auto`` (the default) the backbone is dilated to
    stride 16, as in the paper and smp (measured on CamVid: README, "DeepLabV3+ output stride").
    """

    preferred_output_stride = 16

    def __init__(self, in_channels: int | Sequence[int], num_classes: int, reductions: Sequence[int] | None = None,
                 aspp_channels: int = 256, decoder_channels: int = 256, low_level_channels: int = 48,
                 atrous_rates: Sequence[int] | None = None, separable: bool = True, dropout: float = 0.1):
        super().__init__()
        chans = _as_list(in_channels)
        reds = list(reductions) if reductions is not None else [4 * 2**i for i in range(len(chans))]
        if len(reds) != len(chans):
            raise ValueError(f"reductions {reds} and in_channels {chans} differ in length")
        # low-level feature: stride 4 if present, else the shallowest one that is at least stride 4
        cands = [i for i, r in enumerate(reds) if r >= 4] or [0]
        self.low_index = next((i for i in cands if reds[i] == 4), cands[0])
        self.output_stride = reds[-1]
        rates = tuple(atrous_rates) if atrous_rates is not None else rates_for_stride(self.output_stride)
        self.aspp = ASPP(chans[-1], aspp_channels, rates, separable=separable, dropout=dropout)
        self.low_proj = conv_bn_relu(chans[self.low_index], low_level_channels, 1)
        self.decoder = nn.Sequential(
            conv_bn_relu(aspp_channels + low_level_channels, decoder_channels, 3, separable=separable),
            conv_bn_relu(decoder_channels, decoder_channels, 3, separable=separable),
        )
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        feats = [features] if isinstance(features, torch.Tensor) else list(features)
        high = self.aspp(feats[-1])
        low = self.low_proj(feats[self.low_index if len(feats) > 1 else 0])
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.decoder(torch.cat([high, low], dim=1)))
