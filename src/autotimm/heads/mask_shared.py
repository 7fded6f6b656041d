"""Shared-conv mask head (``head=mask_shared``, an ablation option beside Mask R-CNN's per-ROI ``MaskHead``):
convs -> 2x deconv -> per-class mask logits at ``mask_size``, with the heavy convs shared over the image.

Mask R-CNN runs 4 convs of 256 channels on every ROI, so inference cost grows with the number of detections (about
0.5 GMAC per ROI at 14x14: 100 detections cost many times the backbone on a small image). Here the conv tower runs
once per image on the FPN levels ROIs are pooled from, ends in a narrow ``mask_channels`` map and is upsampled 2x (a
shared deconv: P3 becomes stride 4). Each ROI is pooled from the level that fits its size (``MultiScaleRoIAlign``) at
``roi_pool_size``; per ROI run only ``roi_convs`` narrow 3x3 convs (which see the instance centred in its ROI, what
tells it from its neighbours) and a 2x deconv that emits the per-class logits (Mask R-CNN's deconv and 1x1 predictor
folded into one linear map). Per-detection cost is about 100x lower: 100 detections predict in about 1.1x the time
of one (benchmarks/bench_instance.py).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .mask import RoIMaskHead


class Upsample2x(nn.Module):
    """A 2x2, stride-2 transposed convolution written as a 1x1 conv to 4x the channels + ``pixel_shuffle(2)``: the
    same function (the kernel taps do not overlap), but it runs as one matmul instead of torch's slow CPU
    ``conv_transpose2d`` path."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels * 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.proj(x), 2)


class SharedMaskHead(RoIMaskHead):
    """Args:
        in_channels: FPN width.
        num_classes: object classes (one mask channel each).
        mask_size: output mask resolution (any size >= 1; the deconv output, 2 * roi_pool_size, is resized to it when
            they differ).
        roi_pool_size: ROIAlign output size (>= 1).
        num_convs / conv_channels: the shared 3x3 conv stack; its last conv outputs ``mask_channels``.
        mask_channels: width of the pooled ROI features and the per-ROI convs.
        roi_convs: 3x3 convs run per ROI (at ``mask_channels``) before the deconv to per-class logits.
        featmap_names: FPN levels ROIs are pooled from; each box goes to the level that fits its size.
        featmap_strides: those levels' strides in the pyramid (default 8, 16, 32); the mask features are at half.
    ``features(pyramid)`` -> conv'd levels (once per image); ``pool(mask_features, boxes, image_size)`` (a list of
    per-image boxes) or ``pool_rois(mask_features, rois)`` (``[K, 5]``: image index, x1, y1, x2, y2) -> ROI features
    [K, mask_channels, roi, roi]; ``forward(roi_features)`` -> logits [K, C, mask_size, mask_size];
    ``mask_probs(mask_features, image_index, boxes, labels)`` -> each detection's mask probabilities [K, M, M].
    """

    def __init__(self, in_channels: int, num_classes: int, mask_size: int = 28, roi_pool_size: int = 14,
                 num_convs: int = 4, conv_channels: int = 256, mask_channels: int = 32, roi_convs: int = 1,
                 featmap_names: list[str] | None = None, sampling_ratio: int = 1,
                 featmap_strides: list[float] | None = None):
        super().__init__()
        if num_convs < 1:
            raise ValueError(f"num_convs must be >= 1, got {num_convs}")
        # the shared 2x upsampling halves the strides of the pooled maps
        self._init_pooling(mask_size, roi_pool_size, featmap_names, featmap_strides, sampling_ratio, 2.0)
        layers, ch = [], in_channels
        for i in range(num_convs):
            out = mask_channels if i == num_convs - 1 else conv_channels
            layers += [nn.Conv2d(ch, out, 3, padding=1), nn.ReLU(inplace=True)]
            ch = out
        self.convs = nn.Sequential(*layers)
        # shared 2x upsampling of the mask features, so ROIs are pooled from a finer map (stride 4 from P3)
        self.upsample = nn.Sequential(Upsample2x(mask_channels, mask_channels), nn.ReLU(inplace=True))
        # per-ROI 3x3 convs at the narrow width: they see the instance centred in its ROI (what tells it from its
        # neighbours), as Mask R-CNN's per-ROI stack does, at a fraction of its cost
        self.roi_convs = nn.Sequential(*[m for _ in range(roi_convs) for m in (
            nn.Conv2d(mask_channels, mask_channels, 3, padding=1), nn.ReLU(inplace=True))])
        # Mask R-CNN's deconv and 1x1 predictor, folded into one linear map: a 2x2 stride-2 transposed conv straight
        # to per-class logits (no ReLU between them), so the per-ROI upsampling moves 4*C channels, not 4*mask_channels
        self.predictor = Upsample2x(mask_channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def features(self, pyramid: OrderedDict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        return OrderedDict((k, self.upsample(self.convs(pyramid[k]))) for k in self.featmap_names)

    def forward(self, roi_features: torch.Tensor) -> torch.Tensor:
        return self._to_mask_size(self.predictor(self.roi_convs(roi_features)))
