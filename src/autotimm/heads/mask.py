"""Mask head (Mask R-CNN): ROI features -> convs -> 2x deconv -> 1x1 to per-class mask logits at ``mask_size``."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import MultiScaleRoIAlign


class MaskHead(nn.Module):
    """Args:
        in_channels: FPN width.
        num_classes: object classes (one mask channel each).
        mask_size: output mask resolution (any size >= 1; the deconv output 2*roi_pool_size is resized to it when
            they differ).
        roi_pool_size: ROIAlign output size (>= 1).
        num_convs / conv_channels: the conv stack before the deconv.
        featmap_names: FPN levels ROIs are pooled from; each box goes to the level that fits its size
            (``MultiScaleRoIAlign``'s FPN level mapping).
    ``pool(features, boxes, image_size)`` -> ROI features; ``forward(roi_features)`` -> logits [N, C, M, M].
    """

    def __init__(self, in_channels: int, num_classes: int, mask_size: int = 28, roi_pool_size: int = 14,
                 num_convs: int = 4, conv_channels: int = 256, featmap_names: list[str] | None = None,
                 sampling_ratio: int = 2):
        super().__init__()
        if int(mask_size) < 1 or int(roi_pool_size) < 1:
            raise ValueError(f"mask_size and roi_pool_size must be >= 1, got {mask_size}, {roi_pool_size}")
        self.mask_size, self.roi_pool_size = int(mask_size), int(roi_pool_size)
        self.featmap_names = list(featmap_names or ["p3", "p4", "p5"])
        self.roi_align = MultiScaleRoIAlign(self.featmap_names, self.roi_pool_size, sampling_ratio)
        layers, ch = [], in_channels
        for _ in range(num_convs):
            layers += [nn.Conv2d(ch, conv_channels, 3, padding=1), nn.ReLU(inplace=True)]
            ch = conv_channels
        self.convs = nn.Sequential(*layers)
        self.deconv = nn.ConvTranspose2d(ch, conv_channels, 2, stride=2)
        self.predictor = nn.Conv2d(conv_channels, num_classes, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def pool(self, features: OrderedDict[str, torch.Tensor], boxes: list[torch.Tensor],
             image_size: tuple[int, int]) -> torch.Tensor:
        feats = OrderedDict((k, features[k]) for k in self.featmap_names)
        return self.roi_align(feats, boxes, [tuple(image_size)] * len(boxes))

    def forward(self, roi_features: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.deconv(self.convs(roi_features)))
        logits = self.predictor(x)
        if logits.shape[-1] != self.mask_size:
            logits = F.interpolate(logits, size=(self.mask_size, self.mask_size), mode="bilinear",
                                   align_corners=False)
        return logits
