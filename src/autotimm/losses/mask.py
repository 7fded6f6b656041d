"""Mask loss for instance segmentation."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class MaskLoss(nn.Module):
    """Binary cross-entropy between each positive instance's mask logits (its class channel) and its target.

    ``forward(mask_logits [N, C, M, M] or [N, M, M], targets [N, M, M], labels [N] or None)``; with no instance the
    loss is 0 with zero gradients (never NaN).
    """

    def forward(self, mask_logits: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor | None = None):
        if mask_logits.dim() == 4:
            if labels is None:
                raise ValueError("MaskLoss: per-class mask logits [N, C, M, M] need the labels [N]")
            mask_logits = mask_logits[torch.arange(mask_logits.shape[0], device=mask_logits.device), labels]
        if mask_logits.shape[0] == 0:
            return mask_logits.sum() * 0.0
        return F.binary_cross_entropy_with_logits(mask_logits.float(), targets.float())
