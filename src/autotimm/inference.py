"""Inference on image files: whole-image or sliding-window semantic prediction (with optional flip TTA), instance
prediction at the original resolution, and the PNG / COCO-JSON writers behind ``predict.py``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils

from .data.transforms import CV2_INTERPOLATION, DEFAULT_PREPROCESS, eval_finish, eval_resize
from .models.base import to_original
from .tta import TTA, as_tta, pad_to, slide_instances, tta_logits
from .tta import sliding_window_logits as tta_sliding_window


def model_preprocess(model) -> dict:
    """The preprocessing a task (or its checkpoint) was trained with; ImageNet statistics for a bare module."""
    return dict(getattr(model, "preprocess", None) or DEFAULT_PREPROCESS)


def to_tensor(image: np.ndarray, device, preprocess: dict | None = None) -> torch.Tensor:
    """RGB uint8 [H,W,3] -> normalised float [1,3,H,W] with the model's mean/std."""
    pre = preprocess or DEFAULT_PREPROCESS
    x = torch.from_numpy(image).to(device).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(pre["mean"], device=device)[:, None, None]
    std = torch.tensor(pre["std"], device=device)[:, None, None]
    return ((x - mean) / std)[None]


def eval_input(image: np.ndarray, preprocess: dict, image_size: int, device) -> tuple[torch.Tensor, tuple[int, int]]:
    """The validation pipeline on one raw image (the data module's own transforms): longest side resized to
    ``image_size`` with the model's interpolation, padded to a square, normalised. Returns ``[1,3,S,S]`` and the
    un-padded size."""
    resized = eval_resize(image_size, preprocess)(image=image)["image"]
    x = eval_finish(image_size, 0, preprocess)(image=resized)["image"]
    return x[None].to(device), (int(resized.shape[0]), int(resized.shape[1]))


def sliding_window_logits(forward, image: torch.Tensor, tile: int, overlap: float, batch: int = 8) -> torch.Tensor:
    """Average the logits of overlapping ``tile`` x ``tile`` windows ([1,3,H,W] -> [1,C,H,W]), stride
    ``tile * (1 - overlap)`` (``autotimm.tta.sliding_window_logits`` with the stride as a fraction)."""
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    return tta_sliding_window(forward, image, tile, max(1, int(round(tile * (1 - overlap)))), batch)


def guarded_forward(model):
    """``model`` as a forward function whose size errors (fixed-size backbones) say which size works."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        try:
            return model(x)
        except (RuntimeError, AssertionError, ValueError) as e:
            name = getattr(getattr(model.backbone, "config", None), "model_name", "?")
            size = model_preprocess(model).get("image_size")
            raise ValueError(f"backbone {name} cannot take a {x.shape[-2]}x{x.shape[-1]} input ({e}); it was built "
                             f"for {size}x{size}: predict at that size (image_size={size}, or tta.mode=slide "
                             f"tta.crop_size={size} for sliding windows)") from e

    return forward


@torch.no_grad()
def predict_semantic(model, image: np.ndarray, image_size: int | None = None,
                     tta: TTA | dict | None = None) -> np.ndarray:
    """Class ids [H, W] at the image's own resolution.

    ``tta`` (``autotimm.tta.TTA``: ``scales``, ``flip``, ``mode``, ``crop_size``, ``stride``; the schema ``eval.py``
    uses) averages the logits of several views at the original resolution before the argmax. ``mode: whole`` (the
    default) runs exactly the validation pipeline at the model's ``preprocess.image_size`` (or ``image_size``):
    longest side resized, padded to a square, logits cropped and resized back; a model that does not know its
    training size runs the image at its own size, padded to the backbone's stride. ``mode: slide`` runs windows of
    ``crop_size`` pixels every ``stride`` pixels over the image at its own size (resized first when ``image_size`` is
    given): large images at the scale the model was trained on.
    """
    model.eval()
    device = next(model.parameters()).device
    pre = model_preprocess(model)
    multiple = int(pre.get("pad_multiple") or model.backbone.output_stride)
    forward = guarded_forward(model)
    h0, w0 = image.shape[:2]
    tta = as_tta(tta) or TTA()
    if tta.mode == "slide":
        if image_size:
            s = image_size / max(h0, w0)
            image = cv2.resize(image, (max(1, round(w0 * s)), max(1, round(h0 * s))),
                               interpolation=CV2_INTERPOLATION[pre["interpolation"]])
        logits = tta_logits(forward, to_tensor(image, device, pre), tta, multiple, out_size=(h0, w0))
    else:
        size = image_size or pre.get("image_size")
        if size:
            x, valid = eval_input(image, pre, int(size), device)
            logits = tta_logits(forward, x, tta, multiple, valid_size=valid, out_size=(h0, w0))
        else:
            logits = tta_logits(forward, to_tensor(image, device, pre), tta, multiple, out_size=(h0, w0))
    return logits.argmax(1)[0].cpu().numpy().astype(np.int64)


@torch.no_grad()
def predict_instance(model, image: np.ndarray, image_size: int | None = None,
                     tta: TTA | dict | None = None) -> dict[str, torch.Tensor]:
    """Detections at the image's own resolution (boxes, labels, scores, masks; category_ids when known).

    Whole image (default): the validation pipeline at the model's ``preprocess.image_size`` (or ``image_size``); a
    model trained at a fixed ``preprocess.scale`` runs the image resized by it, and one that knows neither runs the
    image at its own size, padded to the backbone's stride.
    ``tta.mode=slide``: windows of ``tta.crop_size`` pixels every ``tta.stride`` over the image at its own size
    (resized first when ``image_size`` is given, then by ``tta.scales[0]``), detections merged across windows
    (``autotimm.tta.slide_instances``): large microscopy or histology images at the scale the model learned. The
    model's own post-processing settings apply (``model.model.set_postprocess``)."""
    tta = as_tta(tta)
    if tta is not None and (tta.flip or len(tta.scales) != 1 or (tta.mode == "whole" and tta.scales != [1.0])):
        raise ValueError(f"tta: {tta}: instance models take one scale without flip (mode=slide for large images)")
    model.eval()
    net = model.model
    device = next(model.parameters()).device
    pre = model_preprocess(model)
    h0, w0 = image.shape[:2]
    if tta is not None and tta.mode == "slide":
        s = (image_size / max(h0, w0) if image_size else 1.0) * tta.scales[0]
        scaled = image if s == 1.0 else cv2.resize(image, (max(1, round(w0 * s)), max(1, round(h0 * s))),
                                                   interpolation=CV2_INTERPOLATION[pre["interpolation"]])
        post = net.postprocess
        det = slide_instances(net.predict, to_tensor(scaled, device, pre), tta.crop_size, tta.stride,
                              float(post.get("nms_thresh", 0.5)), int(post.get("max_detections_per_image", 100)))
        det = to_original(det, 0, torch.tensor([[h0, w0]]), torch.tensor([list(scaled.shape[:2])]))
        return net.with_category_ids(det)
    size = image_size or (None if pre.get("scale") else pre.get("image_size"))
    if size:
        x, (vh, vw) = eval_input(image, pre, int(size), device)
    else:  # the image at its own size, or resized by the fixed scale it was trained at (preprocess.scale)
        s = float(pre.get("scale") or 1.0)
        scaled = image if s == 1.0 else cv2.resize(image, (max(1, round(w0 * s)), max(1, round(h0 * s))),
                                                   interpolation=CV2_INTERPOLATION[pre["interpolation"]])
        x, (vh, vw) = to_tensor(scaled, device, pre), scaled.shape[:2]
        multiple = int(pre.get("pad_multiple") or 32)
        x = pad_to(x, math.ceil(vh / multiple) * multiple, math.ceil(vw / multiple) * multiple)
    return net.predict(x, torch.tensor([[h0, w0]]), torch.tensor([[vh, vw]]))[0]


def palette(n: int) -> np.ndarray:
    """Distinct colours for ``n`` classes (class 0 black), the VOC bit-interleaving scheme."""
    pal = np.zeros((max(n, 256), 3), np.uint8)
    for i in range(len(pal)):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def _hwc(image_chw: torch.Tensor) -> np.ndarray:
    return image_chw.permute(1, 2, 0).contiguous().numpy()


def save_semantic(image: np.ndarray, classes: np.ndarray, out_dir: Path, stem: str, num_classes: int) -> list[Path]:
    from PIL import Image
    from torchvision.utils import draw_segmentation_masks

    pal = palette(num_classes)
    mask_path, overlay_path = out_dir / f"{stem}_mask.png", out_dir / f"{stem}_overlay.png"
    im = Image.fromarray(classes.astype(np.uint8), mode="P")
    im.putpalette(pal.flatten().tolist())
    im.save(mask_path)  # palette PNG: the pixel values are the class ids, the colours are for people
    one_hot = torch.from_numpy(classes)[None] == torch.arange(1, num_classes)[:, None, None]  # class 0 unpainted
    blend = draw_segmentation_masks(torch.from_numpy(image).permute(2, 0, 1), one_hot, alpha=0.5,
                                    colors=[tuple(int(v) for v in pal[c]) for c in range(1, num_classes)])
    cv2.imwrite(str(overlay_path), cv2.cvtColor(_hwc(blend), cv2.COLOR_RGB2BGR))
    return [mask_path, overlay_path]


def save_instance(image: np.ndarray, pred: dict, out_dir: Path, stem: str, class_names=None) -> Path:
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    n = len(pred["labels"])
    pal = palette(n + 2)[1:]
    colors = [tuple(int(v) for v in pal[k % len(pal)]) for k in range(n)]
    canvas = torch.from_numpy(image).permute(2, 0, 1)
    if n:
        canvas = draw_segmentation_masks(canvas, pred["masks"].bool().cpu(), alpha=0.5, colors=colors)
        names = [class_names[lab] if class_names and lab < len(class_names) else str(lab)
                 for lab in pred["labels"].tolist()]
        captions = [f"{name} {sc:.2f}" for name, sc in zip(names, pred["scores"].tolist())]
        canvas = draw_bounding_boxes(canvas, pred["boxes"].float().cpu(), labels=captions, colors=colors, width=1)
    path = out_dir / f"{stem}_overlay.png"
    cv2.imwrite(str(path), cv2.cvtColor(_hwc(canvas), cv2.COLOR_RGB2BGR))
    return path


def coco_results(pred: dict, image_id) -> list[dict]:
    """Detections as COCO results entries (bbox xywh, RLE segmentation, the dataset's category id when known)."""
    masks = np.asfortranarray(pred["masks"].to(torch.uint8).cpu().numpy().transpose(1, 2, 0))
    rles = mask_utils.encode(masks) if masks.shape[-1] else []
    cats = pred.get("category_ids", pred["labels"]).tolist()
    out = []
    for b, cat, score, rle in zip(pred["boxes"].tolist(), cats, pred["scores"].tolist(), rles):
        rle["counts"] = rle["counts"].decode("ascii")
        out.append({"image_id": image_id, "category_id": int(cat), "score": round(float(score), 5),
                    "bbox": [round(b[0], 2), round(b[1], 2), round(b[2] - b[0], 2), round(b[3] - b[1], 2)],
                    "segmentation": rle})
    return out


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data))
