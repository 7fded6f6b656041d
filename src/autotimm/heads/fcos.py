"""FCOS head (Tian et al. 2019): shared classification and box towers with GroupNorm over all pyramid levels,
per-level learnable scales on the box regression, centerness on the box tower."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def group_norm(channels: int) -> nn.GroupNorm:
    # up to 32 groups, at least 2 channels each: a 1x1 map (P7 of a small image) still has 2 values per group
    groups = math.gcd(32, max(1, channels // 2))
    return nn.GroupNorm(groups, channels)


class Scale(nn.Module):
    def __init__(self, init: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class FCOSHead(nn.Module):
    """Args:
        in_channels: FPN width.
        num_classes: object classes (no background class: sigmoid scores).
        num_convs: convs per tower.
        num_levels: pyramid levels (one scale each).
        prior_prob: initial foreground probability of the classifier (focal-loss init).
    ``forward(features)`` -> (cls_logits [B, P, C], box_regression [B, P, 4] as l,t,r,b distances in units of the
    level's stride (>= 0), centerness logits [B, P]) with P the locations of all levels, level by level, row-major.
    """

    def __init__(self, in_channels: int, num_classes: int, num_convs: int = 4, num_levels: int = 5,
                 prior_prob: float = 0.01):
        super().__init__()

        def tower():
            layers = []
            for _ in range(num_convs):
                layers += [nn.Conv2d(in_channels, in_channels, 3, padding=1), group_norm(in_channels), nn.ReLU()]
            return nn.Sequential(*layers)

        self.cls_tower, self.box_tower = tower(), tower()
        self.cls_logits = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(in_channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale() for _ in range(num_levels))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features: Sequence[torch.Tensor]):
        cls, box, ctr = [], [], []
        for level, f in enumerate(features):
            c = self.cls_tower(f)
            b = self.box_tower(f)
            cls.append(self.cls_logits(c).flatten(2))
            box.append(F.relu(self.scales[level](self.bbox_pred(b))).flatten(2))
            ctr.append(self.centerness(b).flatten(2))
        return (torch.cat(cls, 2).transpose(1, 2), torch.cat(box, 2).transpose(1, 2),
                torch.cat(ctr, 2)[:, 0])
