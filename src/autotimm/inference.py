"""Inference on image files: whole-image or sliding-window semantic prediction (with optional flip TTA), instance
prediction at the original resolution, and the PNG / COCO-JSON writers behind ``predict.py``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils

from .data.transforms import IMAGENET_MEAN, IMAGENET_STD


def to_tensor(image: np.ndarray, device) -> torch.Tensor:
    x = torch.from_numpy(image).to(device).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN, device=device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=device)[:, None, None]
    return ((x - mean) / std)[None]


def _pad_to(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return F.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2]))


def sliding_window_logits(forward, image: torch.Tensor, tile: int, overlap: float, batch: int = 8) -> torch.Tensor:
    """Average the logits of overlapping ``tile`` x ``tile`` windows ([1,3,H,W] -> [1,C,H,W]).

    The image is padded so the windows tile it exactly (stride ``tile * (1 - overlap)``); window logits are summed
    back with ``F.fold`` and divided by the per-pixel window count, all in tensor ops.
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    _, _, h, w = image.shape
    stride = max(1, int(round(tile * (1 - overlap))))
    ph = max(tile, tile + math.ceil((h - tile) / stride) * stride)
    pw = max(tile, tile + math.ceil((w - tile) / stride) * stride)
    x = _pad_to(image, ph, pw)
    windows = F.unfold(x, tile, stride=stride)  # [1, 3*t*t, T]
    n = windows.shape[-1]
    windows = windows[0].T.reshape(n, 3, tile, tile)
    logits = torch.cat([forward(windows[i: i + batch]) for i in range(0, n, batch)])  # [T, C, t, t]
    c = logits.shape[1]
    summed = F.fold(logits.reshape(n, -1).T[None], (ph, pw), tile, stride=stride)
    counts = F.fold(torch.ones(1, tile * tile, n, device=x.device), (ph, pw), tile, stride=stride)
    return (summed / counts)[..., :h, :w].reshape(1, c, h, w)


@torch.no_grad()
def predict_semantic(model, image: np.ndarray, image_size: int | None = None, tile_size: int | None = None,
                     overlap: float = 0.25, hflip: bool = False) -> np.ndarray:
    """Class ids [H, W] at the image's own resolution. ``image_size`` resizes the longest side first (aspect kept);
    ``tile_size`` switches to sliding-window inference; ``hflip`` averages with the flipped image's logits."""
    model.eval()
    device = next(model.parameters()).device
    h0, w0 = image.shape[:2]
    if image_size:
        s = image_size / max(h0, w0)
        image = cv2.resize(image, (max(1, round(w0 * s)), max(1, round(h0 * s))), interpolation=cv2.INTER_LINEAR)
    x = to_tensor(image, device)
    stride = model.backbone.output_stride

    def forward(batch):
        hh, ww = batch.shape[-2:]
        padded = _pad_to(batch, math.ceil(hh / stride) * stride, math.ceil(ww / stride) * stride)
        out = model(padded)[..., :hh, :ww].float()
        if hflip:  # flipping back puts the right-hand padding on the right again, so the same crop applies
            out = 0.5 * (out + model(padded.flip(-1)).flip(-1)[..., :hh, :ww].float())
        return out.softmax(1)

    probs = sliding_window_logits(forward, x, tile_size, overlap) if tile_size else forward(x)
    if probs.shape[-2:] != (h0, w0):
        probs = F.interpolate(probs, size=(h0, w0), mode="bilinear", align_corners=False)
    return probs.argmax(1)[0].cpu().numpy().astype(np.int64)


@torch.no_grad()
def predict_instance(model, image: np.ndarray, image_size: int | None = None) -> dict[str, torch.Tensor]:
    """Detections at the image's own resolution: boxes, labels, scores, masks (and category_ids when known)."""
    model.eval()
    device = next(model.parameters()).device
    h0, w0 = image.shape[:2]
    s = (image_size / max(h0, w0)) if image_size else 1.0
    resized = cv2.resize(image, (max(1, round(w0 * s)), max(1, round(h0 * s)))) if s != 1.0 else image
    x = to_tensor(resized, device)
    vh, vw = x.shape[-2:]
    stride = 32
    x = _pad_to(x, math.ceil(vh / stride) * stride, math.ceil(vw / stride) * stride)
    out = model(x)
    return model.detect(out, tuple(x.shape[-2:]), torch.tensor([[h0, w0]]), torch.tensor([[vh, vw]]))[0]


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


def save_semantic(image: np.ndarray, classes: np.ndarray, out_dir: Path, stem: str, num_classes: int) -> list[Path]:
    from PIL import Image

    pal = palette(num_classes)
    mask_path, overlay_path = out_dir / f"{stem}_mask.png", out_dir / f"{stem}_overlay.png"
    im = Image.fromarray(classes.astype(np.uint8), mode="P")
    im.putpalette(pal.flatten().tolist())
    im.save(mask_path)  # palette PNG: the pixel values are the class ids, the colours are for people
    colour = pal[classes]
    blend = np.where(classes[..., None] > 0, (0.5 * image + 0.5 * colour), image).astype(np.uint8)
    cv2.imwrite(str(overlay_path), cv2.cvtColor(blend, cv2.COLOR_RGB2BGR))
    return [mask_path, overlay_path]


def save_instance(image: np.ndarray, pred: dict, out_dir: Path, stem: str, class_names=None) -> Path:
    pal = palette(len(pred["labels"]) + 2)[1:]
    canvas = image.copy()
    masks = pred["masks"].bool().cpu().numpy()
    labels, scores = pred["labels"].tolist(), pred["scores"].tolist()
    if len(masks):
        ids = (masks * (np.arange(len(masks)) + 1)[:, None, None]).max(0)  # last instance on top
        colour = pal[np.maximum(ids - 1, 0) % len(pal)]
        canvas = np.where(ids[..., None] > 0, 0.5 * canvas + 0.5 * colour, canvas).astype(np.uint8)
    for k, (b, lab, sc) in enumerate(zip(pred["boxes"].tolist(), labels, scores)):
        col = tuple(int(v) for v in pal[k % len(pal)])
        x1, y1, x2, y2 = (int(round(v)) for v in b)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), col, 1)
        name = class_names[lab] if class_names and lab < len(class_names) else str(lab)
        cv2.putText(canvas, f"{name} {sc:.2f}", (x1, max(8, y1 - 2)), cv2.FONT_HERSHEY_SIMPLEX, 0.3, col, 1)
    path = out_dir / f"{stem}_overlay.png"
    cv2.imwrite(str(path), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
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
