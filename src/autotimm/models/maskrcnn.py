"""Mask R-CNN (He et al. 2017) on any timm backbone, from torchvision's parts: ``RegionProposalNetwork`` (with its
``AnchorGenerator`` and ``RPNHead``), ``RoIHeads`` with ``MultiScaleRoIAlign`` box and mask pooling, ``TwoMLPHead`` +
``FastRCNNPredictor`` for boxes, ``MaskRCNNHeads`` + ``MaskRCNNPredictor`` for masks; on our timm backbone + FPN
(P2-P5 and a max-pooled P6, as torchvision's ``resnet_fpn_backbone``). ``conf/arch/maskrcnn.yaml``.

What this file adds to torchvision's ``MaskRCNN`` class, and why it does not use that class: the project's data
modules already resize, pad and normalise (with the backbone's own mean/std), so torchvision's
``GeneralizedRCNNTransform`` is left out and the parts get the batch as it is; labels are shifted by one (torchvision
keeps 0 for background); losses are also returned in eval mode (the validation loss); detections are pasted at the
original image size with the vectorised ``paste_masks`` (torchvision's ``paste_masks_in_image`` loops over masks).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign

from .base import InstanceModelBase, scale_boxes
from .fcos import paste_binary_masks, paste_masks


class SizedMaskPredictor(MaskRCNNPredictor):
    """torchvision's ``MaskRCNNPredictor`` (2x2 stride-2 deconv, ReLU, 1x1 conv), its logits resized to ``mask_size``
    when that differs from twice the ROI size, so ``mask_size`` / ``roi_pool_size`` mean what they mean for the FCOS
    model's mask head (torchvision's mask loss takes its target size from the logits)."""

    def __init__(self, in_channels: int, dim_reduced: int, num_classes: int, mask_size: int, roi_pool_size: int):
        super().__init__(in_channels, dim_reduced, num_classes)
        self.mask_size, self.roi_pool_size = int(mask_size), int(roi_pool_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        if self.mask_size != 2 * self.roi_pool_size:
            logits = F.interpolate(logits, size=(self.mask_size, self.mask_size), mode="bilinear", align_corners=False)
        return logits


@contextlib.contextmanager
def training_branches(*modules: nn.Module):
    """Run ``modules`` in training mode (torchvision's RPN and ROI heads compute losses, and sample proposals, only
    then; they hold no normalisation or dropout layers, so nothing else changes), restoring their modes after."""
    modes = [m.training for m in modules]
    for m in modules:
        m.train(True)
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


class MaskRCNNModel(InstanceModelBase):
    """Args (torchvision's ``MaskRCNN`` / ``FasterRCNN`` names and defaults, unless said):
        backbone: feature extractor (``TimmFeatureBackbone``).
        num_classes: object classes (no background; torchvision's predictors get ``num_classes + 1``).
        fpn_channels: FPN width (256).
        fpn_min_stride: the finest pyramid level (4: P2, as torchvision's ResNet-FPN).
        anchor_scale: anchor size in strides of its level (8: 32 px on P2 ... 512 px on P6, torchvision's sizes);
            ``anchor_sizes`` gives them per level instead. ``aspect_ratios``: (0.5, 1, 2).
        rpn_*: the region proposal network (proposals kept before / after NMS, in training and testing; NMS and
            matching IoUs; anchors sampled per image and their positive fraction).
        box_*: the box branch (ROIs sampled per image for the losses and their positive fraction, matching IoUs,
            ``box_roi_pool_size`` 7 and the two-layer MLP's ``representation_size`` 1024).
        mask_size / roi_pool_size: as for the FCOS model's mask head: ROIAlign output ``roi_pool_size`` (14), masks
            predicted at ``2 * roi_pool_size`` (the deconv), resized to ``mask_size`` (28) when they differ.
        mask_head_convs / mask_head_channels: the per-ROI conv stack (4 x 256).
        sampling_ratio: ROIAlign sampling points per bin (2).
        score_thresh / nms_thresh / max_detections_per_image / mask_threshold: post-processing (0.05, 0.5, 100,
            0.5).
        loss_weights: multipliers of the named losses (``loss_objectness``, ``loss_rpn_box_reg``,
            ``loss_classifier``, ``loss_box_reg``, ``loss_mask``); 1 where not given.
        channels_last / category_ids: as for the FCOS model.
    """

    LOSSES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")
    export_batch_size = 1  # torchvision's RPN and ROI heads loop over the images: a trace fixes their number

    def __init__(self, backbone: nn.Module, num_classes: int, fpn_channels: int = 256, fpn_min_stride: int = 4,
                 anchor_scale: float = 8.0, anchor_sizes: list[list[float]] | None = None,
                 aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
                 rpn_pre_nms_top_n_train: int = 2000, rpn_pre_nms_top_n_test: int = 1000,
                 rpn_post_nms_top_n_train: int = 2000, rpn_post_nms_top_n_test: int = 1000,
                 rpn_nms_thresh: float = 0.7, rpn_fg_iou_thresh: float = 0.7, rpn_bg_iou_thresh: float = 0.3,
                 rpn_batch_size_per_image: int = 256, rpn_positive_fraction: float = 0.5,
                 rpn_score_thresh: float = 0.0,
                 box_batch_size_per_image: int = 512, box_positive_fraction: float = 0.25,
                 box_fg_iou_thresh: float = 0.5, box_bg_iou_thresh: float = 0.5, box_roi_pool_size: int = 7,
                 representation_size: int = 1024,
                 mask_size: int = 28, roi_pool_size: int = 14, mask_head_convs: int = 4,
                 mask_head_channels: int = 256, sampling_ratio: int = 2,
                 score_thresh: float = 0.05, nms_thresh: float = 0.5, max_detections_per_image: int = 100,
                 mask_threshold: float = 0.5, loss_weights: dict[str, float] | None = None,
                 channels_last: bool = False, category_ids: list[int] | None = None):
        super().__init__()
        from ..heads.fpn import FPN

        for name, v in (("fpn_channels", fpn_channels), ("mask_size", mask_size), ("roi_pool_size", roi_pool_size),
                        ("max_detections_per_image", max_detections_per_image), ("mask_head_convs", mask_head_convs)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        unknown = sorted(set(loss_weights or {}) - set(self.LOSSES))
        if unknown:
            raise ValueError(f"loss_weights: unknown loss {unknown}; Mask R-CNN's losses are {list(self.LOSSES)}")
        self.backbone = backbone
        self.fpn = FPN(backbone.channels, backbone.reductions, fpn_channels, min_stride=fpn_min_stride,
                       extra_block="maxpool")
        if anchor_sizes is None:
            anchor_sizes = [[anchor_scale * s] for s in self.fpn.strides]
        if len(anchor_sizes) != len(self.fpn.strides):
            raise ValueError(f"anchor_sizes: one list per pyramid level {self.fpn.names}, got {anchor_sizes}")
        anchors = AnchorGenerator(tuple(tuple(float(a) for a in sizes) for sizes in anchor_sizes),
                                  (tuple(float(r) for r in aspect_ratios),) * len(anchor_sizes))
        self.rpn = RegionProposalNetwork(
            anchors, RPNHead(fpn_channels, anchors.num_anchors_per_location()[0]), rpn_fg_iou_thresh,
            rpn_bg_iou_thresh, rpn_batch_size_per_image, rpn_positive_fraction,
            {"training": rpn_pre_nms_top_n_train, "testing": rpn_pre_nms_top_n_test},
            {"training": rpn_post_nms_top_n_train, "testing": rpn_post_nms_top_n_test}, rpn_nms_thresh,
            score_thresh=rpn_score_thresh)
        roi_levels = [n for n, s in zip(self.fpn.names, self.fpn.strides) if s <= 32][:4]  # P2-P5, not the pool
        box_pool = MultiScaleRoIAlign(roi_levels, box_roi_pool_size, sampling_ratio)
        mask_pool = MultiScaleRoIAlign(roi_levels, roi_pool_size, sampling_ratio)
        self.roi_heads = RoIHeads(
            box_pool, TwoMLPHead(fpn_channels * box_roi_pool_size ** 2, representation_size),
            FastRCNNPredictor(representation_size, num_classes + 1), box_fg_iou_thresh, box_bg_iou_thresh,
            box_batch_size_per_image, box_positive_fraction, None, score_thresh, nms_thresh, max_detections_per_image,
            mask_roi_pool=mask_pool,
            mask_head=MaskRCNNHeads(fpn_channels, [mask_head_channels] * mask_head_convs, 1),
            mask_predictor=SizedMaskPredictor(mask_head_channels, mask_head_channels, num_classes + 1, mask_size,
                                              roi_pool_size))
        self.num_classes = num_classes
        self.mask_size, self.roi_pool_size = mask_size, roi_pool_size
        self.mask_threshold = float(mask_threshold)
        self.loss_weights = {k: float(v) for k, v in (loss_weights or {}).items()}
        self.channels_last = bool(channels_last)
        self.category_ids = list(category_ids) if category_ids else None

    # post-processing lives on torchvision's ROI heads (their attributes), the mask threshold here -------------------
    @property
    def score_thresh(self) -> float:
        return self.roi_heads.score_thresh

    @property
    def nms_thresh(self) -> float:
        return self.roi_heads.nms_thresh

    @property
    def max_detections_per_image(self) -> int:
        return self.roi_heads.detections_per_img

    def _set_postprocess_value(self, key: str, value: Any) -> None:
        names = {"score_thresh": "score_thresh", "nms_thresh": "nms_thresh",
                 "max_detections_per_image": "detections_per_img"}
        if key in names:
            setattr(self.roi_heads, names[key], value)
        else:
            setattr(self, key, value)

    def compiled_modules(self) -> list[nn.Module]:
        return [self.backbone, self.fpn]

    # the pieces ----------------------------------------------------------------------------------------------------
    def features(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.fpn(self.backbone(images))

    @staticmethod
    def image_list(images: torch.Tensor) -> ImageList:
        """The batch as torchvision's ``ImageList``. Every image gets the padded batch size: ``MultiScaleRoIAlign``
        infers each level's scale from the largest image size it is given, which un-padded sizes would get wrong."""
        size = (images.shape[-2], images.shape[-1])  # 0-dim tensors while tracing: the export follows the size
        return ImageList(images, [size] * images.shape[0])

    def _losses(self, feats, images: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        tv_targets = [{"boxes": t["boxes"].to(images.device).float(), "labels": t["labels"].to(images.device) + 1,
                       "masks": t["masks"].to(images.device)} for t in targets]
        images = self.image_list(images)
        with training_branches(self.rpn, self.roi_heads):
            proposals, losses = self.rpn(images, feats, tv_targets)
            _, roi_losses = self.roi_heads(feats, proposals, images.image_sizes, tv_targets)
        losses.update(roi_losses)
        return {k: v * self.loss_weights.get(k, 1.0) for k, v in losses.items()}

    def _detections(self, feats, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """torchvision's detections (labels 0..C-1, mask probabilities ``[N, M, M]``) at the input size."""
        il = self.image_list(images)
        rpn_mode, roi_mode = self.rpn.training, self.roi_heads.training
        self.rpn.eval()
        self.roi_heads.eval()
        try:
            proposals, _ = self.rpn(il, feats)
            dets, _ = self.roi_heads(feats, proposals, il.image_sizes)
        finally:
            self.rpn.train(rpn_mode)
            self.roi_heads.train(roi_mode)
        return [{"boxes": d["boxes"], "labels": d["labels"] - 1, "scores": d["scores"], "probs": d["masks"][:, 0]}
                for d in dets]

    def _paste(self, dets, images: torch.Tensor, orig_sizes=None, valid_sizes=None):
        h, w = images.shape[-2:]
        out = []
        for i, d in enumerate(dets):  # a loop over images: each is pasted at its own size
            boxes, (oh, ow) = d["boxes"], (h, w)
            if orig_sizes is not None:
                oh, ow = (int(v) for v in orig_sizes[i])
                boxes = scale_boxes(boxes, orig_sizes[i], valid_sizes[i] if valid_sizes is not None else (h, w))
            masks = paste_binary_masks(d["probs"], boxes, oh, ow, self.mask_threshold)
            out.append({"boxes": boxes, "labels": d["labels"], "scores": d["scores"], "masks": masks})
        return out

    # the contract ----------------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, targets: list[dict] | None = None):
        """With ``targets``: torchvision's five losses (in eval mode too: the proposal and ROI sampling run as in
        training). Without: one detection dict per image at the input resolution."""
        feats = self.features(images)
        if targets is not None:
            return self._losses(feats, images, targets)
        return self._paste(self._detections(feats, images), images)

    def detect(self, images: torch.Tensor, orig_sizes=None, valid_sizes=None) -> list[dict[str, torch.Tensor]]:
        return self._paste(self._detections(self.features(images), images), images, orig_sizes, valid_sizes)

    def losses_and_detections(self, images: torch.Tensor, targets: list[dict], orig_sizes=None, valid_sizes=None):
        """One backbone + FPN pass for the validation loss and the detections."""
        feats = self.features(images)
        losses = self._losses(feats, images, targets)
        return losses, self._paste(self._detections(feats, images), images, orig_sizes, valid_sizes)

    def predict_flat(self, images: torch.Tensor):
        """The exported pipeline (``INSTANCE_OUTPUTS``), traced through torchvision's RPN and ROI heads: their
        per-image loops unroll, so the batch size is fixed at export time (image size and detection count stay
        dynamic, as in torchvision's own Mask R-CNN export)."""
        dets = self._detections(self.features(images), images)
        h, w = images.shape[-2:]
        image_index = torch.cat([torch.full_like(d["labels"], i) for i, d in enumerate(dets)])
        boxes = torch.cat([d["boxes"] for d in dets])
        probs = torch.cat([d["probs"] for d in dets])
        masks = (paste_masks(probs, boxes, h, w) >= self.mask_threshold).to(torch.uint8)
        return image_index, boxes, torch.cat([d["scores"] for d in dets]), torch.cat([d["labels"] for d in dets]), masks
