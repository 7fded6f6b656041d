"""Export a model's whole pipeline to TorchScript or ONNX.

Semantic: normalised images [B,3,H,W] -> class ids [B,H,W] at the input resolution.
Instance: normalised images [B,3,H,W] -> detections after NMS as flat tensors over the batch (grouped by image,
by descending score within an image): ``image_index [D]`` (int64), ``boxes [D,4]`` (xyxy, input pixels), ``scores
[D]``, ``labels [D]`` (int64, 0..C-1) and ``masks [D,H,W]`` (uint8 0/1 at the input resolution).

Both are traced (``torch.jit.trace`` / ``torch.onnx.export(dynamo=False)``) from code written without Python
control flow on data, so batch size, image size and the number of detections stay dynamic; NMS and ROIAlign
export as ONNX ``NonMaxSuppression`` / ``RoiAlign`` (torchvision's symbolics, opset 17).

The model's ``preprocess`` (mean, std, interpolation, training size) travels with the file: the ONNX model's
metadata property ``preprocess`` and the TorchScript archive's extra file ``preprocess.json`` (JSON both).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .models.base import INSTANCE_OUTPUTS

INSTANCE_OUTPUTS = list(INSTANCE_OUTPUTS)


class _Traced(nn.Module):
    """Traces one method of the model (``SemanticModel.predict`` / an instance model's ``predict_flat``): the exported
    graph is the model's own inference code, not a copy of it."""

    def __init__(self, model: nn.Module, method: str):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, images: torch.Tensor):
        return getattr(self.model, self.method)(images)


def export_model(model, path: str | Path, fmt: str = "torchscript", image_size: int = 128) -> Path:
    """Export a task (``SemanticSegmentor``, ``InstanceSegmentor``) to ``path`` (``.pt`` TorchScript or ``.onnx``):
    what is traced follows the task kind (``EXPORTERS``)."""
    was_training = model.training  # the wrappers share the model's modules and switch them to eval to trace
    try:
        return EXPORTERS[model.task_kind](model, path, fmt, image_size)
    finally:
        model.train(was_training)


IMAGES_AXES = {0: "batch", 2: "height", 3: "width"}


def export_instance(model, path: str | Path, fmt: str = "torchscript", image_size: int = 128) -> Path:
    """Write ``path``: TorchScript (traced) or ONNX (opset 17; dynamic batch, height, width and detections). An
    architecture whose ``predict_flat`` loops over the images (``export_batch_size`` set: Mask R-CNN, through
    torchvision's RPN and ROI heads) exports for that batch size; height, width and detections stay dynamic."""
    axes = {name: {0: "detections"} for name in INSTANCE_OUTPUTS}
    axes["masks"] = {0: "detections", 1: "height", 2: "width"}
    batch = model.model.export_batch_size
    return _export(_Traced(model.model, "predict_flat"), model, path, fmt,
                   torch.randn(batch or 2, 3, image_size, image_size), INSTANCE_OUTPUTS, axes,
                   images_axes=IMAGES_AXES if batch is None else {2: "height", 3: "width"})


def export_semantic(model, path: str | Path, fmt: str = "torchscript", image_size: int = 128) -> Path:
    """Write ``path`` (``.pt`` TorchScript or ``.onnx`` with dynamic batch/height/width); return it."""
    return _export(_Traced(model.model, "predict"), model, path, fmt, torch.randn(1, 3, image_size, image_size),
                   ["classes"], {"classes": {0: "batch", 1: "height", 2: "width"}})


def _export(wrapper: nn.Module, model, path: str | Path, fmt: str, example: torch.Tensor, output_names: list[str],
            output_axes: dict, images_axes: dict | None = None) -> Path:
    """Trace ``wrapper`` on ``example`` into TorchScript, or export it to ONNX (legacy TorchScript-based exporter,
    opset 17, dynamic axes); an operator ONNX lacks is reported with the backbone's name."""
    if fmt not in ("torchscript", "onnx"):
        raise ValueError(f"format: unknown {fmt!r}; valid: ['onnx', 'torchscript']")
    wrapper.eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps(getattr(model, "preprocess", None) or {})  # how to normalise the input, with the model
    with torch.no_grad():
        if fmt == "torchscript":
            torch.jit.trace(wrapper, example, check_trace=False).save(str(path),
                                                                       _extra_files={"preprocess.json": meta})
            return path
        try:
            torch.onnx.export(wrapper, (example,), str(path), dynamo=False, opset_version=17, input_names=["images"],
                              output_names=output_names,
                              dynamic_axes={"images": images_axes or IMAGES_AXES, **output_axes})
        except torch.onnx.errors.UnsupportedOperatorError as e:
            path.unlink(missing_ok=True)
            name = getattr(getattr(getattr(model, "backbone", None), "config", None), "model_name", "?")
            raise RuntimeError(f"format=onnx: cannot export this model (backbone {name}): {e}. Use "
                               f"format=torchscript, which supports every op") from e
    import onnx

    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {"preprocess": meta})
    onnx.save(proto, str(path))
    return path


# task kind -> exporter, and what the exported graph computes (export.py logs it)
EXPORTERS = {"semantic": export_semantic, "instance": export_instance}
EXPORTED = {"semantic": "normalised images [B,3,H,W] -> class ids [B,H,W]",
            "instance": f"normalised images [B,3,H,W] -> {', '.join(INSTANCE_OUTPUTS)} (flat over the batch, "
                        f"after NMS)"}
