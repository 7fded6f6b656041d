"""FCOSInstanceModel: backbone -> FPN -> FCOS head (boxes, classes) + ROI mask head, with FCOS target assignment
and post-processing beside it (``fcos.py``). The architecture ``InstanceSegmentor`` builds by default
(``conf/arch/fcos.yaml``); it follows the ``InstanceModelBase`` contract: given targets it returns its named losses,
otherwise the detections; ``predict_flat`` is the traceable pipeline ``export.py`` exports."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from .base import InstanceModelBase, scale_boxes
from .fcos import (
    assign_targets,
    decode_boxes,
    level_ranges,
    make_points,
    pad_targets,
    paste_binary_masks,
    paste_masks,
    postprocess,
)


def build_part(part: Any, default: Callable[..., nn.Module], **required: Any) -> nn.Module:
    """A model part given as a ready module (used as is), a factory (a class or ``functools.partial``, called with
    the arguments only the model knows) or ``None`` (``default``, called the same way), torchvision-style."""
    if isinstance(part, nn.Module):
        return part
    return (part or default)(**required)


class FCOSInstanceModel(InstanceModelBase):
    """Args:
        backbone: feature extractor (``TimmFeatureBackbone``).
        num_classes: object classes (no background class).
        fpn_channels: FPN width (P3-P7).
        head_num_convs: convs per FCOS tower (with the default head).
        head: the FCOS head: a module, or a factory called with ``in_channels``, ``num_classes``, ``num_levels``
            (default ``FCOSHead`` with ``num_convs=head_num_convs``).
        mask_head: a ``RoIMaskHead`` (``MaskHead``, Mask R-CNN's per-ROI head, by default; or ``SharedMaskHead``),
            or a factory called with ``in_channels``, ``num_classes``, ``featmap_names``, ``featmap_strides``.
        loss: ``InstanceSegmentationLoss`` (focal, GIoU, centerness, mask BCE and their weights), or a factory.
        fpn: a ready FPN module (default: ``autotimm.heads.FPN`` over the backbone, P3-P7).
        mask_min_stride: the finest stride the mask head pools from: 8 (the pyramid's P3-P5, the default) or 4
            (P2-P5, as Mask R-CNN: a P2 is added for the mask head alone, from the backbone's stride-4 feature by
            the FPN's top-down rule, ``heads.fpn.TopDownLevel``; the FCOS head keeps P3-P7). Boxes under 112 px
            then pool from stride 4 instead of 8: small objects' masks get 2x the detail for 0.03 GFLOPs per
            256 px window.
        score_thresh / nms_thresh / max_detections_per_image / mask_threshold: post-processing.
        center_radius: FCOS centre sampling radius, in strides.
        pre_nms_top_k: candidates per image kept (by score) before NMS; at least ``max_detections_per_image``.
        mask_rois_per_image: instances per image the mask loss trains on, sampled at random when an image holds more
            (``None``: all of them, the seed's behaviour). The per-ROI mask head's cost grows with the instance count,
            so dense scenes (hundreds per image) cap it, as Mask R-CNN's mask branch only sees its sampled ROIs.
        channels_last: run convolutions in channels-last memory format.
        category_ids: label -> dataset category id, added to predictions as ``category_ids`` when known.
    """

    postprocess_keys = ("score_thresh", "nms_thresh", "max_detections_per_image", "mask_threshold", "pre_nms_top_k")

    def __init__(self, backbone: nn.Module, num_classes: int, fpn_channels: int = 256, head_num_convs: int = 4,
                 head: Any = None, mask_head: Any = None, loss: Any = None, fpn: nn.Module | None = None,
                 score_thresh: float = 0.05, nms_thresh: float = 0.5, max_detections_per_image: int = 100,
                 mask_threshold: float = 0.5, center_radius: float = 1.5, pre_nms_top_k: int = 1000,
                 mask_rois_per_image: int | None = None, channels_last: bool = False,
                 category_ids: list[int] | None = None, mask_min_stride: int = 8):
        super().__init__()
        from ..heads.fcos import FCOSHead
        from ..heads.fpn import FPN, TopDownLevel
        from ..heads.mask import MaskHead
        from ..losses.detection import InstanceSegmentationLoss

        for name, v in (("fpn_channels", fpn_channels), ("max_detections_per_image", max_detections_per_image)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        self.backbone = backbone
        self.fpn = fpn if fpn is not None else FPN(backbone.channels, backbone.reductions, fpn_channels)
        width = self.fpn.out_channels
        self.head = build_part(head, lambda **kw: FCOSHead(num_convs=head_num_convs, **kw), in_channels=width,
                               num_classes=num_classes, num_levels=len(self.fpn.strides))
        self.fine_level, self._fine_index = None, None
        if mask_min_stride not in (4, 8) or isinstance(mask_min_stride, bool):
            raise ValueError(f"mask_min_stride must be 8 (P3-P5) or 4 (P2-P5), got {mask_min_stride!r}")
        names, strides = self.fpn.names[:3], self.fpn.strides[:3]
        if mask_min_stride == 4:
            if self.fpn.strides[0] != 8:
                raise ValueError(f"mask_min_stride=4 adds a P2 below the pyramid's P3; this pyramid starts at stride "
                                 f"{self.fpn.strides[0]}")
            reductions = [int(r) for r in backbone.reductions]
            if 4 not in reductions:
                raise ValueError(f"mask_min_stride=4 needs a backbone feature at stride 4; this backbone's strides "
                                 f"are {reductions}")
            self._fine_index = max(i for i, r in enumerate(reductions) if r == 4)
            self.fine_level = TopDownLevel(backbone.channels[self._fine_index], width)
            names, strides = ["p2", *self.fpn.names[:3]], [4, *self.fpn.strides[:3]]
        self.mask_head = build_part(mask_head, MaskHead, in_channels=width, num_classes=num_classes,
                                    featmap_names=names, featmap_strides=strides)
        self.criterion = build_part(loss, InstanceSegmentationLoss)
        self.num_classes = num_classes
        self.score_thresh, self.nms_thresh = float(score_thresh), float(nms_thresh)
        self.max_detections_per_image, self.mask_threshold = int(max_detections_per_image), float(mask_threshold)
        self.center_radius = center_radius
        self.pre_nms_top_k = int(pre_nms_top_k)
        if self.pre_nms_top_k < self.max_detections_per_image:
            raise ValueError(f"pre_nms_top_k ({pre_nms_top_k}) must be >= max_detections_per_image "
                             f"({max_detections_per_image}): NMS could never keep that many")
        if mask_rois_per_image is not None and (isinstance(mask_rois_per_image, bool)
                                                or not isinstance(mask_rois_per_image, int) or mask_rois_per_image < 1):
            raise ValueError(f"mask_rois_per_image must be an integer >= 1 or None, got {mask_rois_per_image!r}")
        self.mask_rois_per_image = mask_rois_per_image
        self.category_ids = list(category_ids) if category_ids else None
        self.channels_last = bool(channels_last)
        self._points_cache: dict = {}

    def _set_postprocess_value(self, key: str, value: Any) -> None:
        if key == "max_detections_per_image" and value > self.pre_nms_top_k:
            self.pre_nms_top_k = int(value)  # NMS must see at least as many candidates as it may keep
        if key == "pre_nms_top_k" and value < self.max_detections_per_image:
            raise ValueError(f"pre_nms_top_k ({int(value)}) must be >= max_detections_per_image "
                             f"({self.max_detections_per_image})")
        setattr(self, key, int(value) if key == "pre_nms_top_k" else value)

    def compiled_modules(self) -> list[nn.Module]:
        return [self.backbone, self.fpn, self.head]

    # raw outputs -------------------------------------------------------------------------------------------------
    def features(self, images: torch.Tensor) -> dict[str, Any]:
        """Raw outputs: FPN levels, mask-head features, class logits [B,P,C], box regression [B,P,4] (stride
        units), centerness logits [B,P], and the locations (points, strides, size ranges)."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        feats = self.backbone(images)
        pyramid = self.fpn(feats)
        levels = list(pyramid.values())
        cls, reg, ctr = self.head(levels)
        sizes = tuple(tuple(f.shape[-2:]) for f in levels)
        if torch.jit.is_tracing():  # sizes are traced values: build the locations in the graph
            points, strides, _ = make_points([f.shape[-2:] for f in levels], self.fpn.strides, images.device)
            ranges = None
        else:
            key = (sizes, images.device)
            if key not in self._points_cache:
                points, strides, lvl = make_points(list(sizes), self.fpn.strides, images.device)
                self._points_cache = {key: (points, strides, level_ranges(len(sizes), lvl))}
            points, strides, ranges = self._points_cache[key]
        mask_pyramid = pyramid
        if self.fine_level is not None:  # P2 for the mask head alone
            mask_pyramid = OrderedDict([("p2", self.fine_level(feats[self._fine_index], levels[0])), *pyramid.items()])
        return {"features": pyramid, "mask_features": self.mask_head.features(mask_pyramid), "cls": cls, "reg": reg,
                "ctr": ctr, "points": points, "strides": strides, "ranges": ranges,
                "image_size": images.shape[-2:]}

    # training ----------------------------------------------------------------------------------------------------
    def compute_losses(self, out: dict[str, Any], targets: list[dict]) -> dict[str, torch.Tensor]:
        """The criterion's weighted losses (``loss_cls``, ``loss_reg``, ``loss_ctr``, ``loss_mask``)."""
        gt_boxes, gt_labels, gt_valid = pad_targets(targets, out["cls"].device)
        pos, labels, boxes_t, ctr_t = assign_targets(out["points"], out["strides"], out["ranges"], gt_boxes,
                                                     gt_labels, gt_valid, self.center_radius)
        C = self.num_classes
        cls_t = F.one_hot(labels, C).float() * pos[..., None]
        pred_boxes = decode_boxes(out["points"], out["strides"], out["reg"].float())
        mask_logits, mask_t, mask_labels = self._mask_inputs(out["mask_features"], targets)
        return self.criterion(out["cls"].reshape(-1, C), pred_boxes.reshape(-1, 4), out["ctr"].reshape(-1),
                              cls_t.reshape(-1, C), boxes_t.reshape(-1, 4), ctr_t.reshape(-1), pos.reshape(-1),
                              mask_logits, mask_t, mask_labels)

    def _mask_inputs(self, features, targets: list[dict]):
        """ROIs are the ground-truth boxes; mask targets are the ground-truth masks cropped and resized to them
        (``roi_align`` of the binary masks, thresholded at 0.5), as in Mask R-CNN. With ``mask_rois_per_image``,
        an image holding more instances trains the mask head on that many of them, drawn at random each step."""
        ref = next(iter(features.values()))
        counts = torch.tensor([len(t["boxes"]) for t in targets], device=ref.device)
        n = int(counts.sum())
        m = self.mask_head.mask_size
        if n == 0:  # no instance: a zero that keeps every mask-head parameter in the graph (DDP needs them)
            zero = sum(p.sum() for p in self.mask_head.parameters()) * 0.0
            return zero.reshape(1, 1, 1, 1).expand(0, self.num_classes, m, m), ref.new_zeros(0, m, m), \
                torch.zeros(0, dtype=torch.long, device=ref.device)
        image_index = torch.repeat_interleave(torch.arange(len(targets), device=ref.device), counts)
        keep = self.sample_mask_rois(image_index, len(targets))
        boxes = torch.cat([t["boxes"] for t in targets]).to(ref.device).float()
        if keep is not None:
            image_index, boxes = image_index[keep], boxes[keep]
        rois = torch.cat([image_index[:, None].to(boxes.dtype), boxes], 1)
        logits = self.mask_head.run(self.mask_head.pool_rois(features, rois))
        target, labels = self.mask_targets(targets, logits.device, keep)
        return logits, target, labels

    def sample_mask_rois(self, image_index: torch.Tensor, num_images: int) -> torch.Tensor | None:
        """Indices (ascending, into the batch's instances) of at most ``mask_rois_per_image`` instances per image,
        uniformly at random without replacement; ``None`` when every instance is kept. Vectorised: one sort of
        ``image index + uniform key`` ranks the instances within their image."""
        k = self.mask_rois_per_image
        if k is None:
            return None
        counts = torch.bincount(image_index, minlength=num_images)
        if int(counts.max()) <= k:
            return None
        order = torch.argsort(image_index.double() + torch.rand(len(image_index), device=image_index.device,
                                                                dtype=torch.float64))
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(len(order), device=order.device) - starts[image_index[order]]
        return order[rank < k].sort().values

    def mask_targets(self, targets: list[dict], device=None,
                     keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Each instance's mask cropped to its box and resized to ``mask_size`` (binary, [N, M, M]) and its label
        [N], over the batch in order (only the instances ``keep`` indexes, when given)."""
        boxes = torch.cat([t["boxes"].float() for t in targets]).to(device)
        masks = torch.cat([t["masks"] for t in targets]).to(device)
        labels = torch.cat([t["labels"] for t in targets]).to(device)
        if len(masks) != len(boxes):
            raise ValueError(f"targets hold {len(boxes)} boxes but {len(masks)} masks; each instance needs both")
        if keep is not None:
            boxes, masks, labels = boxes[keep], masks[keep], labels[keep]
        m = self.mask_head.mask_size
        idx = torch.arange(len(boxes), device=boxes.device, dtype=boxes.dtype)[:, None]
        target = roi_align(masks[:, None].float(), torch.cat([idx, boxes], 1), (m, m), 1.0, 0, aligned=True)[:, 0]
        return (target >= 0.5).float(), labels

    # inference ---------------------------------------------------------------------------------------------------
    def detections(self, out: dict[str, Any]):
        """Flat over the batch, grouped by image, best score first: image index [D], boxes [D,4] (input pixels),
        scores [D], labels [D] and own-class mask probabilities [D, M, M]. No Python control flow on data."""
        img, boxes, scores, labels = postprocess(out["cls"], out["reg"], out["ctr"], out["points"], out["strides"],
                                                 out["image_size"], self.score_thresh, self.nms_thresh,
                                                 self.max_detections_per_image, self.pre_nms_top_k)
        probs = self.mask_head.mask_probs(out["mask_features"], img, boxes, labels)
        return img, boxes, scores, labels, probs

    def detect_from(self, out: dict[str, Any], orig_sizes=None, valid_sizes=None) -> list[dict[str, torch.Tensor]]:
        """One dict per image from ``features``' outputs; boxes and masks at the input size, or mapped to
        ``orig_sizes`` (un-padding with ``valid_sizes``) when given: mask probabilities are pasted at that size."""
        B = out["cls"].shape[0]
        img, boxes, scores, labels, probs = self.detections(out)
        counts = torch.bincount(img, minlength=B).tolist()
        h, w = (int(v) for v in out["image_size"])
        results = []
        for i, (b, s, lab, p) in enumerate(zip(torch.split(boxes, counts), torch.split(scores, counts),
                                               torch.split(labels, counts), torch.split(probs, counts))):
            oh, ow = h, w  # one paste per image: images may have different original sizes
            if orig_sizes is not None:
                oh, ow = (int(v) for v in orig_sizes[i])
                b = scale_boxes(b, orig_sizes[i], valid_sizes[i] if valid_sizes is not None else (h, w))
            masks = paste_binary_masks(p, b, oh, ow, self.mask_threshold)
            results.append({"boxes": b, "labels": lab, "scores": s, "masks": masks})
        return results

    def detect(self, images: torch.Tensor, orig_sizes=None, valid_sizes=None) -> list[dict[str, torch.Tensor]]:
        return self.detect_from(self.features(images), orig_sizes, valid_sizes)

    def losses_and_detections(self, images: torch.Tensor, targets: list[dict], orig_sizes=None, valid_sizes=None):
        """One forward for the validation loss and the detections."""
        out = self.features(images)
        return self.compute_losses(out, targets), self.detect_from(out, orig_sizes, valid_sizes)

    def forward(self, images: torch.Tensor, targets: list[dict] | None = None):
        """With ``targets``: the losses (dict). Without: one detection dict per image at the input resolution."""
        out = self.features(images)
        if targets is not None:
            return self.compute_losses(out, targets)
        return self.detect_from(out)

    def predict_flat(self, images: torch.Tensor):
        """The exported pipeline: ``(image_index [D], boxes [D,4], scores [D], labels [D], masks [D,H,W] uint8)``
        at the input resolution, flat over the batch. Traces with dynamic batch, size and detection count."""
        out = self.features(images)
        img, boxes, scores, labels, probs = self.detections(out)
        size = images.shape[-2:]
        masks = (paste_masks(probs, boxes, size[0], size[1]) >= self.mask_threshold).to(torch.uint8)
        return img, boxes, scores, labels, masks
