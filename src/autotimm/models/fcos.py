"""FCOS target assignment and inference post-processing, vectorised over images, levels, boxes and detections.

Locations of all levels are concatenated (``points [P, 2]`` in input pixels, ``strides [P]``); ground truth is
padded to ``[B, N]`` with a validity mask, so assignment is a handful of ``[B, P, N]`` tensor ops.
"""

from __future__ import annotations

import torch
from torchvision.ops import batched_nms

INF = float("inf")
# FCOS size ranges of the regression targets' max side per level (P3..P7)
DEFAULT_RANGES = ((0, 64), (64, 128), (128, 256), (256, 512), (512, INF))


def make_points(feature_sizes, strides: list[int], device=None):
    """Location centres of every level: points [P, 2] (x, y), strides [P], level index [P].

    Sizes may be the 0-dim tensors ``Tensor.shape`` gives while tracing, so an exported graph follows the input
    size (no ``torch.full`` with a size, which would freeze it)."""
    pts, strd, lvl = [], [], []
    for level, ((h, w), s) in enumerate(zip(feature_sizes, strides)):
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * s
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * s
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        xx, yy = xx.reshape(-1), yy.reshape(-1)
        pts.append(torch.stack([xx, yy], 1))
        strd.append(torch.full_like(xx, float(s)))
        lvl.append(torch.full_like(xx, level, dtype=torch.long))
    return torch.cat(pts), torch.cat(strd), torch.cat(lvl)


def level_ranges(num_levels: int, level: torch.Tensor) -> torch.Tensor:
    ranges = list(DEFAULT_RANGES[:num_levels])
    ranges[-1] = (ranges[-1][0], INF)  # the last level takes everything larger
    return torch.tensor(ranges, device=level.device, dtype=torch.float32)[level]


def pad_targets(targets: list[dict], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """List of per-image {"boxes", "labels"} -> boxes [B, N, 4], labels [B, N], valid [B, N]."""
    n = max([len(t["boxes"]) for t in targets] + [1])
    B = len(targets)
    boxes = torch.zeros(B, n, 4, device=device)
    labels = torch.zeros(B, n, dtype=torch.long, device=device)
    valid = torch.zeros(B, n, dtype=torch.bool, device=device)
    for i, t in enumerate(targets):  # a loop over images only, to pad
        k = len(t["boxes"])
        if k:
            boxes[i, :k] = t["boxes"].to(device).float()
            labels[i, :k] = t["labels"].to(device)
            valid[i, :k] = True
    return boxes, labels, valid


def assign_targets(points, strides, ranges, gt_boxes, gt_labels, gt_valid, center_radius: float = 1.5):
    """FCOS assignment: a location is positive for a box when it lies inside the box and within
    ``center_radius * stride`` of its centre, and the box's max regression distance fits the level's range; ties go
    to the smallest box.

    Returns pos [B, P] bool, labels [B, P] (valid where pos), boxes [B, P, 4] xyxy, centerness [B, P].
    """
    x = points[None, :, 0, None]  # [1, P, 1]
    y = points[None, :, 1, None]
    x1, y1, x2, y2 = (gt_boxes[:, None, :, i] for i in range(4))  # [B, 1, N]
    ltrb = torch.stack([x - x1, y - y1, x2 - x, y2 - y], dim=-1)  # [B, P, N, 4]
    inside_box = ltrb.amin(-1) > 0
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    rad = strides[None, :, None] * center_radius
    inside_center = ((x - torch.maximum(cx - rad, x1)) > 0) & ((torch.minimum(cx + rad, x2) - x) > 0) \
        & ((y - torch.maximum(cy - rad, y1)) > 0) & ((torch.minimum(cy + rad, y2) - y) > 0)
    max_reg = ltrb.amax(-1)
    in_range = (max_reg >= ranges[None, :, 0, None]) & (max_reg <= ranges[None, :, 1, None])
    area = ((x2 - x1) * (y2 - y1)).expand_as(max_reg)
    cand = inside_box & inside_center & in_range & gt_valid[:, None, :]
    area = torch.where(cand, area, torch.full_like(area, INF))
    min_area, idx = area.min(dim=-1)  # [B, P]
    pos = torch.isfinite(min_area)
    labels = torch.gather(gt_labels, 1, idx)
    boxes = torch.gather(gt_boxes, 1, idx[..., None].expand(-1, -1, 4))
    t = torch.gather(ltrb, 2, idx[:, :, None, None].expand(-1, -1, 1, 4))[:, :, 0]
    lr, tb = t[..., [0, 2]], t[..., [1, 3]]
    ctr = (lr.amin(-1) / lr.amax(-1).clamp(min=1e-6)) * (tb.amin(-1) / tb.amax(-1).clamp(min=1e-6))
    ctr = torch.where(pos, ctr.clamp(min=0).sqrt(), torch.zeros_like(ctr))
    return pos, labels, boxes, ctr


def decode_boxes(points: torch.Tensor, strides: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    """reg [..., P, 4] (l, t, r, b in stride units) -> boxes xyxy [..., P, 4] in pixels."""
    d = reg * strides[:, None]
    return torch.cat([points - d[..., :2], points + d[..., 2:]], dim=-1)


def _limits(image_size, like: torch.Tensor) -> torch.Tensor:
    """(h, w) -> [w, h, w, h]; h and w are ints eagerly, 0-dim tensors while tracing (kept dynamic)."""
    h, w = image_size
    if isinstance(h, torch.Tensor):
        return torch.stack([w, h, w, h]).to(like)
    return like.new_tensor([w, h, w, h])


def _top_k(x: torch.Tensor, k: int):
    """min(k, x.shape[1]), as a traced value when tracing (so a smaller input does not ask topk for too many)."""
    n = x.shape[1]
    return torch.clamp(n, max=k) if isinstance(n, torch.Tensor) else min(k, n)


def postprocess(cls_logits, reg, ctr_logits, points, strides, image_size, score_thresh: float = 0.05,
                nms_thresh: float = 0.5, max_detections: int = 100, pre_nms_top_k: int = 1000):
    """Scores sqrt(sigmoid(cls) * sigmoid(ctr)), per-image pre-NMS top-k, NMS per image and class in one call, then
    the per-image top ``max_detections``.

    Returns flat tensors over the batch, grouped by image and by descending score within an image: image index
    [D], boxes [D, 4] (clamped to the image), scores [D], labels [D]. Written without Python control flow on data
    (no ``.item()``, no loops over images or detections), so it traces into TorchScript and ONNX with a dynamic
    batch, image size and number of detections: NMS per image and class is ``torchvision.ops.batched_nms`` (whose
    traced form offsets the boxes of each group apart), the per-image rank is a cumulative count.
    """
    B, C = cls_logits.shape[0], cls_logits.shape[2]
    scores = (torch.sigmoid(cls_logits.float()) * torch.sigmoid(ctr_logits.float())[..., None]).sqrt()
    flat = scores.reshape(B, -1)
    top_scores, top_idx = flat.topk(_top_k(flat, pre_nms_top_k), dim=1)
    keep = top_scores > score_thresh
    img = torch.arange(B, device=flat.device)[:, None].expand_as(top_idx)[keep]
    cand, sc = top_idx[keep], top_scores[keep]
    loc, label = torch.div(cand, C, rounding_mode="floor"), cand % C
    all_boxes = decode_boxes(points, strides, reg.float())  # [B, P, 4]
    boxes = all_boxes.reshape(-1, 4)[img * all_boxes.shape[1] + loc]
    limits = _limits(image_size, boxes)
    boxes = torch.minimum(boxes.clamp(min=0), limits)
    nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    img, boxes, sc, label = img[nonempty], boxes[nonempty], sc[nonempty], label[nonempty]
    # NMS per image and class: torchvision's batched_nms (eagerly one NMS per group on CPU past 1000 boxes, ~9x
    # faster than one NMS over the offset boxes of a whole batch; when tracing the offset trick, which exports)
    kept = batched_nms(boxes, sc, img * C + label, nms_thresh)  # sorted by score, descending
    img, boxes, sc, label = img[kept], boxes[kept], sc[kept], label[kept]
    onehot = (img[:, None] == torch.arange(B, device=img.device)[None]).long()  # [D, B]
    rank = (onehot.cumsum(0) * onehot).sum(1) - 1  # position within its image, in score order
    top = rank < max_detections
    img, boxes, sc, label, rank = img[top], boxes[top], sc[top], label[top], rank[top]
    order = torch.argsort(img * max_detections + rank)  # unique keys: group by image, score order kept
    return img[order], boxes[order], sc[order], label[order]


def _interp_weights(coord: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear weights [N, L, size] for continuous mask-pixel coordinates [N, L]: the hat function
    ``max(0, 1 - |coord - j|)`` over mask pixels j, i.e. the two taps of linear interpolation, and zero for taps
    outside the mask (``grid_sample``'s zero padding with ``align_corners=False``)."""
    taps = torch.arange(size, device=coord.device, dtype=coord.dtype)
    return (1 - (coord[..., None] - taps).abs()).clamp(min=0)


def paste_masks(mask_probs: torch.Tensor, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Paste [N, M, M] mask probabilities into [N, H, W] images at their boxes (bilinear, zero outside the box).

    Bilinear resampling is separable: ``out[n] = Wy[n] @ mask[n] @ Wx[n].T`` with per-box interpolation matrices, two
    batched matmuls for all detections instead of sampling every image pixel per detection.
    """
    m = mask_probs.shape[-1]
    x1, y1, x2, y2 = boxes.float().unbind(1)
    bw, bh = (x2 - x1).clamp(min=1e-6), (y2 - y1).clamp(min=1e-6)
    xs = torch.arange(width, device=boxes.device, dtype=torch.float32) + 0.5
    ys = torch.arange(height, device=boxes.device, dtype=torch.float32) + 0.5
    # image pixel centre -> continuous mask pixel index (align_corners=False convention)
    cx = (xs[None] - x1[:, None]) / bw[:, None] * m - 0.5  # [N, W]
    cy = (ys[None] - y1[:, None]) / bh[:, None] * mask_probs.shape[-2] - 0.5  # [N, H]
    wx = _interp_weights(cx, m)  # [N, W, M]
    wy = _interp_weights(cy, mask_probs.shape[-2])  # [N, H, M]
    return torch.bmm(torch.bmm(wy, mask_probs.float()), wx.transpose(1, 2))


def paste_binary_masks(mask_probs: torch.Tensor, boxes: torch.Tensor, height: int, width: int, threshold: float,
                       chunk: int = 32) -> torch.Tensor:
    """``paste_masks`` thresholded to uint8 [N, H, W], ``chunk`` detections at a time eagerly (the float canvas of
    500 detections on a 1272x603 microscopy image would need 1.5 GB; this needs 32 / 500 of it)."""
    n = mask_probs.shape[0]
    if torch.jit.is_tracing() or n <= chunk:
        return (paste_masks(mask_probs, boxes, height, width) >= threshold).to(torch.uint8)
    return torch.cat([(paste_masks(mask_probs[i: i + chunk], boxes[i: i + chunk], height, width) >= threshold)
                      .to(torch.uint8) for i in range(0, n, chunk)])
