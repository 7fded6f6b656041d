"""A toy instance architecture written outside the package: per-pixel classification + connected components.

It shows what a new architecture needs (README, "Add your own instance architecture"): this file and one YAML
(``conf/arch/pixel_cc.yaml``), nothing in autotimm. Train it with

    PYTHONPATH=examples/instance_arch python train.py --config-dir examples/instance_arch/conf model=instance \
        arch=pixel_cc

The network classifies every pixel (background or one of the classes) from the backbone's stride-8 features;
instances are the connected regions of one class. Touching objects of the same class merge: a baseline, which is the
point of comparing it with FCOS or Mask R-CNN on the same data.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from autotimm.models import InstanceModelBase


class PixelCCModel(InstanceModelBase):
    """Args: backbone (given by the task), num_classes (given by the task), hidden (width of the per-pixel head),
    score_thresh (mean class probability an instance needs), max_detections_per_image, min_area (pixels)."""

    postprocess_keys = ("score_thresh", "max_detections_per_image", "min_area")

    def __init__(self, backbone: nn.Module, num_classes: int, hidden: int = 64, score_thresh: float = 0.05,
                 max_detections_per_image: int = 100, min_area: float = 4.0):
        super().__init__()
        self.backbone = backbone
        level = min(range(len(backbone.reductions)), key=lambda i: abs(backbone.reductions[i] - 8))
        self.level = level
        self.head = nn.Sequential(nn.Conv2d(backbone.channels[level], hidden, 3, padding=1), nn.BatchNorm2d(hidden),
                                  nn.ReLU(inplace=True), nn.Conv2d(hidden, num_classes + 1, 1))
        self.num_classes = num_classes
        self.score_thresh, self.max_detections_per_image, self.min_area = score_thresh, max_detections_per_image, \
            min_area

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Per-pixel logits [B, 1 + C, H, W] (channel 0: background) at the input resolution."""
        out = self.head(self.backbone(images)[self.level])
        return F.interpolate(out, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, images: torch.Tensor, targets: list[dict] | None = None):
        logits = self.logits(images)
        if targets is not None:
            h, w = images.shape[-2:]
            maps = []
            for t in targets:  # one class map per image: label + 1 inside each instance, 0 elsewhere
                labels = (t["labels"].to(images.device) + 1)[:, None, None]
                masks = t["masks"].to(images.device).bool()
                maps.append((masks * labels).amax(0) if len(labels) else torch.zeros(h, w, dtype=torch.long,
                                                                                        device=images.device))
            return {"loss_pixel": F.cross_entropy(logits, torch.stack(maps).long())}
        return [self.instances(p) for p in logits.softmax(1)]

    def instances(self, probs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Connected regions of each class in the argmax map, as detections (score: their mean class probability)."""
        c1 = probs.shape[0]
        classes = probs.argmax(0)
        _, comp = cv2.connectedComponents((classes > 0).cpu().numpy().astype(np.uint8), connectivity=8)
        key = torch.from_numpy(comp).to(probs.device).long() * c1 + classes  # one id per (component, class)
        ids, inverse = torch.unique(key, return_inverse=True)
        fg = ids % c1 > 0
        area = torch.bincount(inverse.flatten(), minlength=len(ids)).float()
        score_sum = torch.bincount(inverse.flatten(), weights=probs.gather(0, classes[None])[0].flatten(),
                                   minlength=len(ids))
        scores = score_sum / area.clamp(min=1)
        keep = torch.where(fg & (area >= self.min_area) & (scores >= self.score_thresh))[0]
        keep = keep[scores[keep].argsort(descending=True)][: self.max_detections_per_image]
        inside = inverse[None] == keep[:, None, None]
        ys, xs = inside.any(2), inside.any(1)
        h, w = classes.shape
        idx_y, idx_x = torch.arange(h, device=probs.device), torch.arange(w, device=probs.device)
        boxes = torch.stack([torch.where(xs, idx_x, w).amin(1), torch.where(ys, idx_y, h).amin(1),
                             torch.where(xs, idx_x, -1).amax(1) + 1, torch.where(ys, idx_y, -1).amax(1) + 1],
                            1).float() if len(keep) else torch.zeros(0, 4, device=probs.device)
        return {"boxes": boxes, "labels": ids[keep] % c1 - 1, "scores": scores[keep], "masks": inside.to(torch.uint8)}
