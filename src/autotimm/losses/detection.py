"""FCOS detection losses: sigmoid focal (classification), GIoU (boxes), BCE (centerness), from torchvision.ops
where they exist, each normalised by the number of positive locations."""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from .mask import MaskLoss


class FCOSLoss(nn.Module):
    """Args: focal_alpha, focal_gamma; cls/reg/centerness weights. ``forward`` takes flattened predictions and
    targets over all images and locations and returns a dict of weighted losses."""

    def __init__(self, focal_alpha: float = 0.25, focal_gamma: float = 2.0, cls_loss_weight: float = 1.0,
                 reg_loss_weight: float = 1.0, centerness_loss_weight: float = 1.0):
        super().__init__()
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.cls_w, self.reg_w, self.ctr_w = cls_loss_weight, reg_loss_weight, centerness_loss_weight

    def forward(self, cls_logits, pred_boxes, ctr_logits, cls_targets, box_targets, ctr_targets, pos):
        """cls_logits [M, C]; pred_boxes / box_targets [M, 4] xyxy; ctr_logits / ctr_targets [M];
        cls_targets [M, C] one-hot (all zero for background); pos [M] bool."""
        num_pos = pos.sum().clamp(min=1).float()
        loss_cls = sigmoid_focal_loss(cls_logits.float(), cls_targets, self.focal_alpha, self.focal_gamma,
                                      reduction="sum") / num_pos
        if bool(pos.any()):
            w = ctr_targets[pos]
            giou = generalized_box_iou_loss(pred_boxes[pos].float(), box_targets[pos], reduction="none")
            loss_reg = (giou * w).sum() / w.sum().clamp(min=1e-6)
            loss_ctr = F.binary_cross_entropy_with_logits(ctr_logits[pos].float(), w, reduction="sum") / num_pos
        else:  # no positive location: zero losses that keep the graph (finite, zero gradients)
            loss_reg = pred_boxes.sum() * 0.0
            loss_ctr = ctr_logits.sum() * 0.0
        return {"loss_cls": self.cls_w * loss_cls, "loss_reg": self.reg_w * loss_reg,
                "loss_ctr": self.ctr_w * loss_ctr}


class InstanceSegmentationLoss(nn.Module):
    """The instance model's loss: FCOS (sigmoid focal, GIoU, centerness BCE) plus the mask BCE, each weighted.

    ``conf/loss/instance.yaml`` configures it (``conf/arch/fcos.yaml`` passes it to ``FCOSInstanceModel``; the
    seed's ``InstanceSegmentor(focal_alpha=..., mask_loss_weight=...)`` arguments fill what a spec leaves out).
    ``forward`` returns ``loss_cls``, ``loss_reg``, ``loss_ctr``, ``loss_mask``, each weighted (the task sums
    them: it sums whatever named losses an instance model returns).
    """

    def __init__(self, focal_alpha: float = 0.25, focal_gamma: float = 2.0, cls_loss_weight: float = 1.0,
                 reg_loss_weight: float = 1.0, centerness_loss_weight: float = 1.0, mask_loss_weight: float = 1.0):
        super().__init__()
        for name, w in (("cls_loss_weight", cls_loss_weight), ("reg_loss_weight", reg_loss_weight),
                        ("centerness_loss_weight", centerness_loss_weight), ("mask_loss_weight", mask_loss_weight)):
            if w < 0:
                raise ValueError(f"loss.{name} must be >= 0, got {w}")
        self.detection = FCOSLoss(focal_alpha, focal_gamma, cls_loss_weight, reg_loss_weight, centerness_loss_weight)
        self.mask = MaskLoss()
        self.mask_loss_weight = mask_loss_weight

    def forward(self, cls_logits, pred_boxes, ctr_logits, cls_targets, box_targets, ctr_targets, pos,
                mask_logits, mask_targets, mask_labels) -> dict:
        """Detection inputs as in ``FCOSLoss``; ``mask_logits [N, C, M, M]`` of the ground-truth ROIs, their
        ``mask_targets [N, M, M]`` and ``mask_labels [N]``."""
        losses = self.detection(cls_logits, pred_boxes, ctr_logits, cls_targets, box_targets, ctr_targets, pos)
        losses["loss_mask"] = self.mask_loss_weight * self.mask(mask_logits, mask_targets, mask_labels)
        return losses
