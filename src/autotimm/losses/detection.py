"""FCOS detection losses: sigmoid focal (classification), GIoU (boxes), BCE (centerness), from torchvision.ops
where they exist, each normalised by the number of positive locations."""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss


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


class InstanceSegmentationLoss(FCOSLoss):
    """FCOS losses plus ``mask_loss_weight`` for the mask BCE: the loss-weight bundle ``conf/loss/instance.yaml``
    configures (``InstanceSegmentor`` takes the same values as arguments)."""

    def __init__(self, focal_alpha: float = 0.25, focal_gamma: float = 2.0, cls_loss_weight: float = 1.0,
                 reg_loss_weight: float = 1.0, centerness_loss_weight: float = 1.0, mask_loss_weight: float = 1.0):
        super().__init__(focal_alpha, focal_gamma, cls_loss_weight, reg_loss_weight, centerness_loss_weight)
        self.mask_loss_weight = mask_loss_weight
