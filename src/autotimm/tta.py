"""Test-time augmentation for semantic segmentation, the one implementation behind ``predict.py``, ``eval.py`` and
the validation loop (``SemanticSegmentor(tta=..., tta_stages=...)``): multi-scale, horizontal flip, and whole-image or
sliding-window inference. Logits of every view are resized to the output (original) resolution and averaged there,
before the argmax, as mmseg's multi-scale + flip evaluation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

MODES = ("whole", "slide")


@dataclass
class TTA:
    """``scales``: input scale factors (1.0 = the evaluation size; mmseg's multi-scale set is 0.5 ... 1.75);
    ``flip``: also the horizontally flipped view; ``mode``: ``whole`` image or ``slide`` (windows of ``crop_size``
    every ``stride`` pixels, ``stride`` defaulting to 2/3 of the crop as in mmseg)."""

    scales: Sequence[float] = field(default_factory=lambda: [1.0])
    flip: bool = False
    mode: str = "whole"
    crop_size: int | None = None
    stride: int | None = None

    def __post_init__(self):
        self.scales = [float(s) for s in self.scales]
        if not self.scales or any(not s > 0 for s in self.scales):
            raise ValueError(f"tta.scales must be a non-empty list of positive factors, got {self.scales}")
        if self.mode not in MODES:
            raise ValueError(f"tta.mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "slide":
            if not self.crop_size or int(self.crop_size) < 1:
                raise ValueError("tta.mode=slide needs tta.crop_size (the window size in pixels)")
            self.crop_size = int(self.crop_size)
            self.stride = int(self.stride) if self.stride else max(1, self.crop_size * 2 // 3)
            if not 1 <= self.stride <= self.crop_size:
                raise ValueError(f"tta.stride must be in [1, crop_size={self.crop_size}], got {self.stride}")

    @property
    def identity(self) -> bool:
        """One view at scale 1, whole: exactly the plain forward."""
        return self.scales == [1.0] and not self.flip and self.mode == "whole"


def as_tta(tta) -> TTA | None:
    if tta is None or isinstance(tta, TTA):
        return tta
    return TTA(**dict(tta))


def pad_to(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return F.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2]))


def padded_forward(forward, batch: torch.Tensor, multiple: int, flip: bool = False) -> torch.Tensor:
    """Logits of a batch padded bottom/right to ``multiple`` and cropped back; with ``flip``, averaged with the
    flipped batch's logits flipped back (the right-hand padding lands on the right again, so the same crop applies)."""
    hh, ww = batch.shape[-2:]
    padded = pad_to(batch, math.ceil(hh / multiple) * multiple, math.ceil(ww / multiple) * multiple)
    out = forward(padded)[..., :hh, :ww].float()
    if flip:
        out = 0.5 * (out + forward(padded.flip(-1)).flip(-1)[..., :hh, :ww].float())
    return out


def sliding_window_logits(forward, image: torch.Tensor, tile: int, stride: int, batch: int = 8) -> torch.Tensor:
    """Average the logits of ``tile`` x ``tile`` windows every ``stride`` pixels ([1,3,H,W] -> [1,C,H,W]).

    The image is padded so the windows tile it exactly; window logits are summed back with ``F.fold`` and divided
    by the per-pixel window count, all in tensor ops."""
    _, _, h, w = image.shape
    ph = max(tile, tile + math.ceil((h - tile) / stride) * stride)
    pw = max(tile, tile + math.ceil((w - tile) / stride) * stride)
    x = pad_to(image, ph, pw)
    windows = F.unfold(x, tile, stride=stride)  # [1, 3*t*t, T]
    n = windows.shape[-1]
    windows = windows[0].T.reshape(n, 3, tile, tile)
    logits = torch.cat([forward(windows[i: i + batch]) for i in range(0, n, batch)])  # [T, C, t, t]
    c = logits.shape[1]
    summed = F.fold(logits.reshape(n, -1).T[None], (ph, pw), tile, stride=stride)
    counts = F.fold(torch.ones(1, tile * tile, n, device=x.device, dtype=logits.dtype), (ph, pw), tile,
                    stride=stride)
    return (summed / counts)[..., :h, :w].reshape(1, c, h, w)


@torch.no_grad()
def tta_logits(forward, image: torch.Tensor, tta: TTA, multiple: int, valid_size: Sequence[int] | None = None,
               out_size: Sequence[int] | None = None) -> torch.Tensor:
    """Averaged logits ``[1, C, *out_size]`` of one image ``[1, 3, H, W]`` (normalised; ``valid_size`` = its
    un-padded region, default all of it) under ``tta``.

    Scale 1, whole: the padded input as it is (the validation pipeline's own forward), cropped to the valid region.
    Other views: the valid region resized by the scale, padded to ``multiple``, optionally flipped and slid over.
    Each view's logits are resized to ``out_size`` (default the valid size) and averaged."""
    vh, vw = (int(v) for v in (valid_size or image.shape[-2:]))
    out_size = tuple(int(v) for v in (out_size or (vh, vw)))
    valid = image[..., :vh, :vw]
    total = None
    for s in tta.scales:
        if tta.mode == "whole" and s == 1.0:
            lg = padded_forward(forward, image, multiple, tta.flip)[..., :vh, :vw]
        else:
            x = valid if s == 1.0 else F.interpolate(valid, size=(max(1, round(vh * s)), max(1, round(vw * s))),
                                                     mode="bilinear", align_corners=False)
            if tta.mode == "whole":
                lg = padded_forward(forward, x, multiple, tta.flip)
            else:
                lg = sliding_window_logits(lambda b: padded_forward(forward, b, multiple, tta.flip), x,
                                           tta.crop_size, tta.stride)
        if tuple(lg.shape[-2:]) != out_size:
            lg = F.interpolate(lg, size=out_size, mode="bilinear", align_corners=False)
        total = lg if total is None else total + lg
    return total / len(tta.scales)


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Window origins every ``stride`` pixels, the last one flush with the end (one window when it fits)."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def core_bounds(starts: list[int], tile: int, length: int) -> list[tuple[float, float]]:
    """Each window's core along one axis: from the middle of its overlap with the previous window to the middle of
    its overlap with the next (the image's edges for the first and last). The cores partition [0, length)."""
    cuts = [0.0] + [(starts[i + 1] + min(starts[i] + tile, length)) / 2 for i in range(len(starts) - 1)] + \
        [float(length)]
    return list(zip(cuts[:-1], cuts[1:]))


@torch.no_grad()
def slide_instances(predict, image: torch.Tensor, tile: int, stride: int, nms_thresh: float,
                    max_detections: int, batch: int = 8) -> dict[str, torch.Tensor]:
    """Instance detections of a large image ``[1, 3, H, W]`` (normalised) from windows of ``tile`` pixels every
    ``stride``: ``predict(windows, orig_sizes, valid_sizes)`` gives each window's detections at its own size;
    a window keeps the detections whose box centre lies in its core (``core_bounds``: the cores partition the image,
    so an object seen whole by the windows around it is reported once, by one of them, with its whole mask when the
    overlap exceeds its size); the survivors are pasted into the image and a last class-wise NMS removes what two
    windows still both report (objects larger than the overlap); at most ``max_detections``, best first."""
    from torchvision.ops import batched_nms

    _, _, h, w = image.shape
    ys, xs = tile_starts(h, tile, stride), tile_starts(w, tile, stride)
    ycore, xcore = core_bounds(ys, tile, h), core_bounds(xs, tile, w)
    windows = [(y0, x0, yc, xc) for y0, yc in zip(ys, ycore) for x0, xc in zip(xs, xcore)]
    boxes, scores, labels, masks = [], [], [], []
    for i in range(0, len(windows), batch):  # a loop over batches of windows
        group = windows[i: i + batch]
        crops = [image[0, :, y0: y0 + tile, x0: x0 + tile] for y0, x0, _, _ in group]
        sizes = torch.tensor([list(c.shape[-2:]) for c in crops])
        x = torch.stack([pad_to(c, tile, tile) for c in crops])
        for (y0, x0, (cy0, cy1), (cx0, cx1)), (th, tw), det in zip(group, sizes.tolist(), predict(x, sizes, sizes)):
            b = det["boxes"].float() + torch.tensor([x0, y0, x0, y0], dtype=torch.float32, device=x.device)
            cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
            keep = (cx >= cx0) & (cx < cx1) & (cy >= cy0) & (cy < cy1)
            if not keep.any():
                continue
            full = torch.zeros((int(keep.sum()), h, w), dtype=torch.uint8, device=x.device)
            full[:, y0: y0 + th, x0: x0 + tw] = det["masks"][keep].to(torch.uint8)
            boxes.append(b[keep])
            scores.append(det["scores"][keep])
            labels.append(det["labels"][keep])
            masks.append(full)
    if not boxes:
        return {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long),
                "masks": torch.zeros((0, h, w), dtype=torch.uint8)}
    boxes, scores, labels, masks = torch.cat(boxes), torch.cat(scores), torch.cat(labels), torch.cat(masks)
    keep = batched_nms(boxes, scores, labels, nms_thresh)[:max_detections]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep], "masks": masks[keep]}
