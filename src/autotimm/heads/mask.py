"""Mask R-CNN's mask head (He et al. 2017), as the seed describes it: ROI-aligned features from the FPN level that
fits each box -> ``num_convs`` x (3x3 conv, ``conv_channels``, ReLU) -> 2x2 stride-2 deconv + ReLU -> 1x1 conv to
per-class logits, resized to ``mask_size`` when it differs from ``2 * roi_pool_size``.

``RoIMaskHead`` is the contract every mask head of the instance model follows (``SharedMaskHead`` in
``mask_shared.py`` is the cheaper ablation variant):

- ``features(pyramid)``: what ROIs are pooled from (here the FPN levels themselves), computed once per image;
- ``pool_rois(features, rois [K, 5])``: multi-level ROIAlign (image index, x1, y1, x2, y2 in input pixels);
- ``forward(roi_features)``: logits ``[K, num_classes, mask_size, mask_size]``;
- ``mask_probs(features, image_index, boxes, labels)``: each detection's own-class probabilities ``[K, M, M]``.

A head is constructed with ``in_channels`` (FPN width), ``num_classes``, ``featmap_names`` and ``featmap_strides``
(the levels ROIs come from) by the model, plus its own keyword arguments (``conf/head/mask*.yaml``).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align
from torchvision.ops.poolers import LevelMapper

ROI_CHUNK = 64  # ROIs per call of a per-ROI head (RoIMaskHead.run)


class RoIMaskHead(nn.Module):
    """ROI pooling from the FPN level that fits each box, and the per-detection mask probabilities.

    The pooling equals torchvision's ``MultiScaleRoIAlign`` (a test checks it), with two differences that the
    exported pipeline needs: the scales are given (not inferred from an image list) and ROIs come flat as ``[K, 5]``,
    with the per-level results scattered back in ROI order, so it traces to TorchScript/ONNX.
    """

    def _init_pooling(self, mask_size: int, roi_pool_size: int, featmap_names: list[str] | None,
                      featmap_strides: list[float] | None, sampling_ratio: int, feature_scale: float = 1.0):
        if int(mask_size) < 1 or int(roi_pool_size) < 1:
            raise ValueError(f"mask_size and roi_pool_size must be >= 1, got {mask_size}, {roi_pool_size}")
        self.mask_size, self.roi_pool_size = int(mask_size), int(roi_pool_size)
        self.featmap_names = list(featmap_names or ["p3", "p4", "p5"])
        strides = list(featmap_strides or [8, 16, 32][: len(self.featmap_names)])
        if len(strides) != len(self.featmap_names):
            raise ValueError(f"featmap_strides {strides} must give one stride per level of {self.featmap_names}")
        # the pooled maps may be finer than the FPN levels (``feature_scale`` 2: a shared 2x upsampling); levels are
        # picked by the FPN paper's rule (eq. 1, canonical 224 px at level 4), as in MultiScaleRoIAlign
        self.scales = [feature_scale / s for s in strides]
        self.sampling_ratio = int(sampling_ratio)
        k = [int(round(math.log2(s / feature_scale))) for s in strides]
        self.level_mapper = LevelMapper(k[0], k[-1])

    def features(self, pyramid: OrderedDict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        return OrderedDict((k, pyramid[k]) for k in self.featmap_names)

    def pool(self, features: OrderedDict[str, torch.Tensor], boxes: list[torch.Tensor],
             image_size: tuple[int, int] | None = None) -> torch.Tensor:
        """ROI features for per-image box lists (``image_size`` is accepted for compatibility; scales are known)."""
        ref = next(iter(features.values()))
        idx = torch.cat([torch.full((len(b), 1), float(i), device=ref.device) for i, b in enumerate(boxes)])
        return self.pool_rois(features, torch.cat([idx, torch.cat(boxes).to(ref.device).float()], 1))

    def pool_rois(self, features: OrderedDict[str, torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        """Multi-scale ROIAlign of ``rois [K, 5]``: each ROI is pooled from the level its size maps to. Eagerly the
        per-level results are written into one output in place; while tracing they are scattered back in ROI order
        (out of place, so the exported graph has no in-place indexing)."""
        feats = [features[k] for k in self.featmap_names]
        size = (self.roi_pool_size, self.roi_pool_size)
        rois = rois.to(feats[0].dtype)
        if len(feats) == 1:
            return roi_align(feats[0], rois, size, self.scales[0], self.sampling_ratio)
        levels = self.level_mapper([rois[:, 1:]])
        tracing = torch.jit.is_tracing()
        out = torch.zeros((rois.shape[0], feats[0].shape[1], *size), dtype=feats[0].dtype, device=rois.device)
        for level, (f, scale) in enumerate(zip(feats, self.scales)):  # a loop over the pyramid levels
            idx = torch.where(levels == level)[0]
            if not tracing and idx.numel() == 0:
                continue
            pooled = roi_align(f, rois[idx], size, scale, self.sampling_ratio).to(out.dtype)
            if tracing:
                out = out.scatter(0, idx.view(-1, 1, 1, 1).expand_as(pooled), pooled)
            else:  # in place: a copy of the whole output per level costs more than the pooling itself
                out[idx] = pooled
        return out

    def run(self, roi_features: torch.Tensor) -> torch.Tensor:
        """``forward`` over the ROIs in chunks of ``ROI_CHUNK`` (eagerly; one call while tracing): the same logits,
        but the per-ROI convs stay in cache (measured on 2 CPU threads, Mask R-CNN's 4 x 256 head: 894 ms for 800
        ROIs in chunks of 50 against 1364 ms in one call)."""
        k = roi_features.shape[0]
        if torch.jit.is_tracing() or k <= ROI_CHUNK:
            return self(roi_features)
        return torch.cat([self(roi_features[i:i + ROI_CHUNK]) for i in range(0, k, ROI_CHUNK)])

    def mask_probs(self, features: OrderedDict[str, torch.Tensor], image_index: torch.Tensor, boxes: torch.Tensor,
                   labels: torch.Tensor) -> torch.Tensor:
        """Mask probabilities [K, M, M] of each detection's own class."""
        rois = torch.cat([image_index[:, None].to(boxes.dtype), boxes], 1)
        logits = self.run(self.pool_rois(features, rois))
        idx = labels[:, None, None, None].expand(-1, 1, logits.shape[2], logits.shape[3])
        return torch.sigmoid(logits.gather(1, idx)[:, 0].float())

    def _to_mask_size(self, logits: torch.Tensor) -> torch.Tensor:
        if 2 * self.roi_pool_size != self.mask_size:  # a Python constant, so traces do not branch on shapes
            logits = F.interpolate(logits, size=(self.mask_size, self.mask_size), mode="bilinear",
                                   align_corners=False)
        return logits


class MaskHead(RoIMaskHead):
    """Mask R-CNN's per-ROI mask head (the default, ``head=mask``).

    Args:
        in_channels: FPN width.
        num_classes: object classes (one mask channel each).
        mask_size: output mask resolution (the deconv gives ``2 * roi_pool_size``; resized when they differ).
        roi_pool_size: ROIAlign output size (14 in Mask R-CNN).
        num_convs / conv_channels: the per-ROI conv stack (4 x 256 in Mask R-CNN).
        featmap_names / featmap_strides: FPN levels ROIs are pooled from (default p3-p5 at strides 8, 16, 32).
        sampling_ratio: ROIAlign sampling points per bin (2, as torchvision's Mask R-CNN).
    """

    def __init__(self, in_channels: int, num_classes: int, mask_size: int = 28, roi_pool_size: int = 14,
                 num_convs: int = 4, conv_channels: int = 256, featmap_names: list[str] | None = None,
                 featmap_strides: list[float] | None = None, sampling_ratio: int = 2):
        super().__init__()
        if num_convs < 0:
            raise ValueError(f"num_convs must be >= 0, got {num_convs}")
        self._init_pooling(mask_size, roi_pool_size, featmap_names, featmap_strides, sampling_ratio)
        layers, ch = [], in_channels
        for _ in range(num_convs):
            layers += [nn.Conv2d(ch, conv_channels, 3, padding=1), nn.ReLU(inplace=True)]
            ch = conv_channels
        self.convs = nn.Sequential(*layers)
        self.deconv = nn.ConvTranspose2d(ch, ch, 2, stride=2)
        self.predictor = nn.Conv2d(ch, num_classes, 1)
        for m in self.modules():  # torchvision's MaskRCNNHeads / MaskRCNNPredictor initialisation
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, roi_features: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.deconv(self.convs(roi_features)))
        return self._to_mask_size(self.predictor(x))
