"""SemanticModel: backbone -> head -> per-pixel logits at the input resolution. A plain ``nn.Module`` (no
Lightning): what tasks train, what ``predict.py`` runs and what ``export.py`` traces."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class SemanticModel(nn.Module):
    """Args:
        backbone: a feature extractor returning a list of NCHW maps, shallow to deep, with ``channels`` and
            ``reductions`` (``autotimm.backbones.TimmFeatureBackbone``).
        head: any module taking that list and returning logits ``[B, C, h, w]`` at any stride.
        channels_last: run convolutions in channels-last memory format.
        aux_head: an auxiliary head for deep supervision in training (PSPNet's, mmseg's ``auxiliary_head``): a
            module taking the backbone level ``aux_level`` and returning logits at any stride. Only
            ``forward(images, aux=True)`` runs it; inference, ``predict`` and export never do.
        aux_level: which backbone level feeds ``aux_head`` (default the second deepest).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, channels_last: bool = False,
                 aux_head: nn.Module | None = None, aux_level: int = -2):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.channels_last = channels_last
        self.aux_head = aux_head
        self.aux_level = int(aux_level)

    def forward(self, images: torch.Tensor, aux: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Normalised images ``[B, 3, H, W]`` -> logits ``[B, num_classes, H, W]`` at the input resolution;
        ``aux=True`` (training with an ``aux_head``): the pair ``(logits, aux_logits)``, both at that resolution."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        features = self.backbone(images)
        size = images.shape[-2:]
        logits = F.interpolate(self.head(features), size=size, mode="bilinear", align_corners=False)
        if not aux:
            return logits
        if self.aux_head is None:
            raise ValueError("forward(aux=True) needs an aux_head (SemanticSegmentor(aux_weight > 0) builds one)")
        aux_logits = self.aux_head(features[self.aux_level])
        return logits, F.interpolate(aux_logits, size=size, mode="bilinear", align_corners=False)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, original_size: Sequence[int] | None = None) -> torch.Tensor:
        """Class ids ``[B, H, W]`` (int64) at the input resolution, or at ``original_size=(H, W)`` (logits are
        resized before the argmax). Runs in eval mode and restores the previous mode."""
        was_training = self.training
        self.eval()
        try:
            logits = self(images)
            if original_size is not None:
                logits = F.interpolate(logits, size=tuple(int(s) for s in original_size), mode="bilinear",
                                       align_corners=False)
            return logits.argmax(dim=1)
        finally:
            self.train(was_training)


def logits_to_original(logits: torch.Tensor, valid_size: torch.Tensor | None,
                       orig_size: torch.Tensor) -> list[torch.Tensor]:
    """Per image: crop the un-padded region, resize the logits to the original size -> ``[C, h, w]`` each."""
    out = []
    for i in range(logits.shape[0]):  # images differ in size: one resize each
        lg = logits[i: i + 1]
        if valid_size is not None:
            vh, vw = (int(v) for v in valid_size[i])
            lg = lg[..., :vh, :vw]
        h, w = (int(v) for v in orig_size[i])
        out.append(F.interpolate(lg, size=(h, w), mode="bilinear", align_corners=False)[0])
    return out
