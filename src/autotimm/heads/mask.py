"""Mask head: convs -> 2x deconv -> 1x1 to per-class mask logits at ``mask_size`` (Mask R-CNN's stack), with the
convs shared over the image.

Mask R-CNN runs its 4 convs on every ROI, so inference cost grows with the number of detections (about 0.5 GMAC per
ROI at 256 channels and 14x14: 100 detections cost many times the backbone on a small image). Here the conv tower
runs once per image on the FPN levels ROIs are pooled from, ends in a narrow ``mask_channels`` map and is upsampled
2x (a shared deconv: P3 becomes stride 4); each ROI is pooled from the level that fits its size
(``MultiScaleRoIAlign``) at ``roi_pool_size``; per ROI run only ``roi_convs`` narrow 3x3 convs, the deconv and the
1x1 predictor. Same receptive field for the convs (plus image context), a per-detection cost about 100x
lower.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import MultiScaleRoIAlign


class MaskHead(nn.Module):
    """Args:
        in_channels: FPN width.
        num_classes: object classes (one mask channel each).
        mask_size: output mask resolution (any size >= 1; the deconv output, 2 * roi_pool_size, is resized to it when
            they differ).
        roi_pool_size: ROIAlign output size (>= 1).
        num_convs / conv_channels: the shared 3x3 conv stack; its last conv outputs ``mask_channels``.
        mask_channels: width of the pooled ROI features, the per-ROI convs, the deconv and the predictor input.
        roi_convs: 3x3 convs run per ROI (at ``mask_channels``) before the deconv.
        featmap_names: FPN levels ROIs are pooled from; each box goes to the level that fits its size.
    ``features(pyramid)`` -> conv'd levels (once per image); ``pool(mask_features, boxes, image_size)`` -> ROI
    features [N, mask_channels, roi, roi]; ``forward(roi_features)`` -> logits [N, C, mask_size, mask_size].
    """

    def __init__(self, in_channels: int, num_classes: int, mask_size: int = 28, roi_pool_size: int = 14,
                 num_convs: int = 4, conv_channels: int = 256, mask_channels: int = 32, roi_convs: int = 1,
                 featmap_names: list[str] | None = None, sampling_ratio: int = 2):
        super().__init__()
        if int(mask_size) < 1 or int(roi_pool_size) < 1:
            raise ValueError(f"mask_size and roi_pool_size must be >= 1, got {mask_size}, {roi_pool_size}")
        if num_convs < 1:
            raise ValueError(f"num_convs must be >= 1, got {num_convs}")
        self.mask_size, self.roi_pool_size = int(mask_size), int(roi_pool_size)
        self.featmap_names = list(featmap_names or ["p3", "p4", "p5"])
        self.roi_align = MultiScaleRoIAlign(self.featmap_names, self.roi_pool_size, sampling_ratio)
        layers, ch = [], in_channels
        for i in range(num_convs):
            out = mask_channels if i == num_convs - 1 else conv_channels
            layers += [nn.Conv2d(ch, out, 3, padding=1), nn.ReLU(inplace=True)]
            ch = out
        self.convs = nn.Sequential(*layers)
        # shared 2x upsampling of the mask features, so ROIs are pooled from a finer map (stride 4 from P3)
        self.upsample = nn.Sequential(nn.ConvTranspose2d(mask_channels, mask_channels, 2, stride=2),
                                      nn.ReLU(inplace=True))
        # per-ROI 3x3 convs at the narrow width: they see the instance centred in its ROI (what tells it from its
        # neighbours), as Mask R-CNN's per-ROI stack does, at a fraction of its cost
        self.roi_convs = nn.Sequential(*[m for _ in range(roi_convs) for m in (
            nn.Conv2d(mask_channels, mask_channels, 3, padding=1), nn.ReLU(inplace=True))])
        self.deconv = nn.ConvTranspose2d(mask_channels, mask_channels, 2, stride=2)
        self.predictor = nn.Conv2d(mask_channels, num_classes, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def features(self, pyramid: OrderedDict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        return OrderedDict((k, self.upsample(self.convs(pyramid[k]))) for k in self.featmap_names)

    def pool(self, mask_features: OrderedDict[str, torch.Tensor], boxes: list[torch.Tensor],
             image_size: tuple[int, int]) -> torch.Tensor:
        return self.roi_align(mask_features, boxes, [tuple(image_size)] * len(boxes))

    def forward(self, roi_features: torch.Tensor) -> torch.Tensor:
        logits = self.predictor(F.relu(self.deconv(self.roi_convs(roi_features))))
        if logits.shape[-1] != self.mask_size:
            logits = F.interpolate(logits, size=(self.mask_size, self.mask_size), mode="bilinear",
                                   align_corners=False)
        return logits
