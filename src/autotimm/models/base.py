"""The instance-model contract every architecture follows (FCOS + mask head, Mask R-CNN, a user's own).

An instance model is an ``nn.Module`` built by ``InstanceSegmentor`` from a spec (``{"_target_": ..., **kwargs}``,
``conf/arch/*.yaml``), called with the timm ``backbone`` the task built and ``num_classes``. It subclasses
``InstanceModelBase`` and implements ``forward``:

- ``forward(images, targets)`` -> a dict of named losses (``{"loss_cls": ..., "loss_mask": ...}``), in training and
  in eval mode alike; the task sums them and logs each (``train/loss_<name>``), it weights nothing itself;
- ``forward(images)`` -> one dict per image: ``boxes [N,4]`` (xyxy, input pixels), ``labels [N]`` (0..C-1),
  ``scores [N]``, ``masks [N,H,W]`` uint8 at the input resolution.

The base class gives everything else the task, ``predict.py``, ``eval.py``, ``export.py`` and the W&B panels use,
with defaults an architecture may override where it can do better:

- ``detect(images, orig_sizes, valid_sizes)``: detections mapped to the original images (default: ``forward`` at the
  input size, the un-padded region cropped and resized; FCOS and Mask R-CNN paste their mask probabilities at the
  original size instead);
- ``losses_and_detections(...)``: both from one backbone pass where the model can share it (validation);
- ``predict(...)``: ``detect`` in eval mode without gradients, with the dataset's ``category_ids`` added;
- ``predict_flat(images)``: the flat form ``export.py`` traces: ``(image_index [D], boxes [D,4], scores [D],
  labels [D], masks [D,H,W] uint8)``;
- post-processing settings (``postprocess_keys``: score / NMS thresholds, detections per image, mask threshold) are
  attributes of the model, read and changed through ``postprocess`` / ``set_postprocess`` only.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

POSTPROCESS_KEYS = ("score_thresh", "nms_thresh", "max_detections_per_image", "mask_threshold")
INSTANCE_OUTPUTS = ("image_index", "boxes", "scores", "labels", "masks")


class InstanceModelBase(nn.Module):
    """Base of every instance architecture (see the module docstring for the contract).

    Subclasses set ``self.backbone`` (the timm feature backbone they were given; the task freezes, compiles and
    reads its preprocessing through it) and the attributes named in ``postprocess_keys``."""

    postprocess_keys: tuple[str, ...] = POSTPROCESS_KEYS
    category_ids: list[int] | None = None  # label -> dataset category id (filled by the task from the data)
    channels_last: bool = False
    export_batch_size: int | None = None  # None: predict_flat traces with a dynamic batch; else the batch it needs

    # post-processing -------------------------------------------------------------------------------------------
    @property
    def postprocess(self) -> dict[str, Any]:
        """The post-processing settings, as plain data."""
        return {k: getattr(self, k) for k in self.postprocess_keys}

    def set_postprocess(self, **values: Any) -> None:
        """Change post-processing settings (``None`` values are left as they are). A setting this architecture does
        not have is an error naming the ones it has."""
        casts = {"max_detections_per_image": int}
        for key, value in values.items():
            if value is None:
                continue
            if key not in self.postprocess_keys:
                raise ValueError(f"{type(self).__name__} has no post-processing setting {key!r}; it has "
                                 f"{list(self.postprocess_keys)}")
            value = casts.get(key, float)(value)
            if key == "max_detections_per_image" and value < 1:
                raise ValueError(f"max_detections_per_image must be >= 1, got {value}")
            self._set_postprocess_value(key, value)

    def _set_postprocess_value(self, key: str, value: Any) -> None:
        setattr(self, key, value)

    # what the task needs ---------------------------------------------------------------------------------------
    def compiled_modules(self) -> list[nn.Module]:
        """Modules ``compile_model`` compiles in place (default: the backbone)."""
        return [self.backbone]

    def forward(self, images: torch.Tensor, targets: list[dict] | None = None):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement forward(images, targets=None)")

    def detect(self, images: torch.Tensor, orig_sizes: torch.Tensor | None = None,
               valid_sizes: torch.Tensor | None = None) -> list[dict[str, torch.Tensor]]:
        """One dict per image; at the input size, or mapped to ``orig_sizes`` (the image content filling
        ``valid_sizes`` of the padded input) when given."""
        return [to_original(d, i, orig_sizes, valid_sizes) for i, d in enumerate(self(images))]

    def losses_and_detections(self, images: torch.Tensor, targets: list[dict], orig_sizes=None, valid_sizes=None):
        """``(losses, detections)`` for validation: the default runs the model twice."""
        return self(images, targets), self.detect(images, orig_sizes, valid_sizes)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, orig_sizes: torch.Tensor | None = None,
                valid_sizes: torch.Tensor | None = None) -> list[dict[str, torch.Tensor]]:
        """``detect`` in eval mode (the previous mode is restored), with ``category_ids`` when known."""
        was_training = self.training
        self.eval()
        try:
            return [self.with_category_ids(d) for d in self.detect(images, orig_sizes, valid_sizes)]
        finally:
            self.train(was_training)

    def with_category_ids(self, det: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.category_ids:
            det = {**det, "category_ids": torch.tensor(self.category_ids, device=det["labels"].device)[det["labels"]]}
        return det

    def predict_flat(self, images: torch.Tensor):
        """The exported pipeline: detections flat over the batch (``INSTANCE_OUTPUTS``) at the input resolution.
        The default flattens ``forward``'s per-image dicts; it traces where ``forward`` does."""
        dets = self(images)
        h, w = images.shape[-2:]
        image_index = torch.cat([torch.full((len(d["labels"]),), i, dtype=torch.long, device=images.device)
                                 for i, d in enumerate(dets)])
        return (image_index, torch.cat([d["boxes"] for d in dets]).reshape(-1, 4),
                torch.cat([d["scores"] for d in dets]), torch.cat([d["labels"] for d in dets]),
                torch.cat([d["masks"] for d in dets]).reshape(-1, h, w).to(torch.uint8))


def loss_name(key: str) -> str:
    """The logged name of a model's loss term: ``loss_<name>`` (a key that already starts with ``loss`` is kept)."""
    return key if key.startswith("loss") else f"loss_{key}"


def to_original(det: dict[str, torch.Tensor], i: int, orig_sizes=None, valid_sizes=None) -> dict[str, torch.Tensor]:
    """Map image ``i``'s detections at the (padded) input size to its original size: boxes scaled from the valid
    region and clipped; masks cropped to the valid region and resized (nearest)."""
    if orig_sizes is None:
        return det
    masks = det["masks"]
    oh, ow = (int(v) for v in orig_sizes[i])
    vh, vw = (int(v) for v in valid_sizes[i]) if valid_sizes is not None else masks.shape[-2:]
    masks = masks[:, :vh, :vw]
    if len(masks) == 0:
        masks = masks.new_zeros((0, oh, ow))
    elif (vh, vw) != (oh, ow):
        masks = F.interpolate(masks[:, None].float(), size=(oh, ow), mode="nearest")[:, 0].to(torch.uint8)
    return {**det, "boxes": scale_boxes(det["boxes"].float(), (oh, ow), (vh, vw)), "masks": masks}


def scale_boxes(boxes: torch.Tensor, orig_size, valid_size) -> torch.Tensor:
    """Boxes in input pixels (content in ``valid_size`` of the input) -> original pixels, clipped to the image."""
    oh, ow = (int(v) for v in orig_size)
    vh, vw = (int(v) for v in valid_size)
    scale = boxes.new_tensor([ow / vw, oh / vh, ow / vw, oh / vh])
    return torch.minimum((boxes * scale).clamp(min=0), boxes.new_tensor([ow, oh, ow, oh]))
