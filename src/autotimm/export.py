"""Export a semantic model's whole pipeline (image -> class map at input resolution) to TorchScript or ONNX."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class SemanticExport(nn.Module):
    """Normalised images [B,3,H,W] -> class ids [B,H,W] (int64) at the input resolution. Holds only the backbone
    and head (no Lightning state), so it traces and exports cleanly."""

    def __init__(self, model):
        super().__init__()
        self.backbone, self.head = model.backbone, model.head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.backbone(images))
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return logits.argmax(1)


def export_semantic(model, path: str | Path, fmt: str = "torchscript", image_size: int = 128) -> Path:
    """Write ``path`` (``.pt`` TorchScript or ``.onnx`` with dynamic batch/height/width); return it."""
    if fmt not in ("torchscript", "onnx"):
        raise ValueError(f"format: unknown {fmt!r}; valid: ['onnx', 'torchscript']")
    wrapper = SemanticExport(model).eval()
    example = torch.randn(1, 3, image_size, image_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        if fmt == "torchscript":
            torch.jit.trace(wrapper, example, check_trace=False).save(str(path))
        else:
            torch.onnx.export(wrapper, (example,), str(path), dynamo=False, opset_version=17,
                              input_names=["images"], output_names=["classes"],
                              dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                                            "classes": {0: "batch", 1: "height", 2: "width"}})
    return path
