"""InstanceSegmentor: timm backbone -> FPN -> FCOS detection head + ROI mask head."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from ..backbones import FeatureBackboneConfig, TimmFeatureBackbone, as_backbone_config
from ..heads.fcos import FCOSHead
from ..heads.fpn import FPN
from ..heads.mask import MaskHead
from ..losses.detection import FCOSLoss
from ..losses.mask import MaskLoss
from ..metrics import MetricConfig
from ..training.logging_config import LoggingConfig
from .base import BaseTask, plain
from .fcos import assign_targets, decode_boxes, level_ranges, make_points, pad_targets, paste_masks, postprocess


class InstanceSegmentor(BaseTask):
    """Instance segmentation: FCOS boxes and classes, Mask R-CNN-style masks from ROI-aligned FPN features.

    Args (see the API reference table): backbone, num_classes (object classes, no background), fpn_channels,
    head_num_convs, mask_size, roi_pool_size, mask_loss_weight, focal_alpha, focal_gamma, cls_loss_weight,
    reg_loss_weight, centerness_loss_weight, score_thresh, nms_thresh, max_detections_per_image, mask_threshold,
    metrics, logging_config, lr, weight_decay, optimizer, scheduler, freeze_backbone, compile_model, compile_kwargs;
    plus ``center_radius`` (FCOS centre sampling), ``mask_num_convs`` and ``mask_channels`` (see ``MaskHead``),
    ``category_ids`` (label -> dataset category
    id, filled from the datamodule at fit time) and ``channels_last``.

    Metrics: a ``MeanAveragePrecision`` config named ``mask_map`` logs ``<stage>/mask_map``, ``<stage>/mask_map_50``,
    ``<stage>/mask_map_75``, ``<stage>/mask_mar_100``... (every scalar it computes, prefixed by the name less its
    ``map``); a name not ending in ``map`` prefixes the keys whole (``segm`` -> ``segm_map_50``).
    """

    def __init__(
        self,
        backbone: str | FeatureBackboneConfig | dict,
        num_classes: int,
        fpn_channels: int = 256,
        head_num_convs: int = 4,
        mask_size: int = 28,
        roi_pool_size: int = 14,
        mask_loss_weight: float = 1.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        cls_loss_weight: float = 1.0,
        reg_loss_weight: float = 1.0,
        centerness_loss_weight: float = 1.0,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        max_detections_per_image: int = 100,
        mask_threshold: float = 0.5,
        metrics: list[MetricConfig | dict] | None = None,
        logging_config: LoggingConfig | dict | None = None,
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
        optimizer: str | dict = "adamw",
        scheduler: str | dict | None = "cosine",
        freeze_backbone: bool = False,
        compile_model: bool | str = True,
        compile_kwargs: dict | None = None,
        center_radius: float = 1.5,
        mask_num_convs: int = 4,
        mask_channels: int = 32,
        category_ids: list[int] | None = None,
        channels_last: bool = False,
    ):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        for name, v in (("mask_size", mask_size), ("roi_pool_size", roi_pool_size), ("fpn_channels", fpn_channels),
                        ("max_detections_per_image", max_detections_per_image)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        backbone_cfg = as_backbone_config(backbone)
        backbone = {**backbone_cfg.to_dict(), "pretrained": False}
        metrics = self._metrics_as_data(metrics)
        if isinstance(logging_config, LoggingConfig):
            logging_config = logging_config.to_dict()
        logging_config = plain(logging_config)
        optimizer, scheduler, compile_kwargs = plain(optimizer), plain(scheduler), plain(compile_kwargs)
        category_ids = plain(category_ids)
        self.save_hyperparameters()

        self.num_classes = num_classes
        self.channels_last = channels_last
        self.backbone = TimmFeatureBackbone(backbone_cfg)
        self.fpn = FPN(self.backbone.channels, self.backbone.reductions, fpn_channels)
        self.head = FCOSHead(fpn_channels, num_classes, head_num_convs, num_levels=len(self.fpn.strides))
        self.mask_head = MaskHead(fpn_channels, num_classes, mask_size, roi_pool_size, mask_num_convs,
                                  conv_channels=fpn_channels, mask_channels=mask_channels,
                                  featmap_names=self.fpn.names[:3], featmap_strides=self.fpn.strides[:3])
        self.det_loss = FCOSLoss(focal_alpha, focal_gamma, cls_loss_weight, reg_loss_weight, centerness_loss_weight)
        self.mask_loss = MaskLoss()
        self.mask_loss_weight = mask_loss_weight
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.max_detections, self.mask_threshold = max_detections_per_image, mask_threshold
        self.center_radius = center_radius
        self.category_ids = list(category_ids) if category_ids else None
        self._setup_common(lr=lr, weight_decay=weight_decay, optimizer=optimizer, scheduler=scheduler,
                           metrics=metrics, metric_defaults={}, logging_config=logging_config,
                           freeze_backbone=freeze_backbone, compile_model=compile_model,
                           compile_kwargs=compile_kwargs)
        self._points_cache: dict = {}
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def compiled_modules(self):
        return [self.backbone, self.fpn, self.head, self.mask_head.convs]

    # core --------------------------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> dict[str, Any]:
        """Raw outputs: FPN features, per-location class logits [B,P,C], box regression [B,P,4] (stride units),
        centerness logits [B,P], and the locations (points, strides)."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        pyramid = self.fpn(self.backbone(images))
        levels = list(pyramid.values())
        cls, reg, ctr = self.head(levels)
        sizes = tuple(tuple(f.shape[-2:]) for f in levels)
        key = (sizes, images.device)
        if key not in self._points_cache:
            points, strides, lvl = make_points(list(sizes), self.fpn.strides, images.device)
            self._points_cache = {key: (points, strides, level_ranges(len(sizes), lvl))}
        points, strides, ranges = self._points_cache[key]
        return {"features": pyramid, "mask_features": self.mask_head.features(pyramid), "cls": cls, "reg": reg,
                "ctr": ctr, "points": points, "strides": strides, "ranges": ranges}

    def compute_losses(self, out: dict[str, Any], targets: list[dict], image_size) -> dict[str, torch.Tensor]:
        gt_boxes, gt_labels, gt_valid = pad_targets(targets, out["cls"].device)
        pos, labels, boxes_t, ctr_t = assign_targets(out["points"], out["strides"], out["ranges"], gt_boxes,
                                                     gt_labels, gt_valid, self.center_radius)
        C = self.num_classes
        cls_t = F.one_hot(labels, C).float() * pos[..., None]
        pred_boxes = decode_boxes(out["points"], out["strides"], out["reg"].float())
        losses = self.det_loss(out["cls"].reshape(-1, C), pred_boxes.reshape(-1, 4), out["ctr"].reshape(-1),
                               cls_t.reshape(-1, C), boxes_t.reshape(-1, 4), ctr_t.reshape(-1), pos.reshape(-1))
        losses["loss_mask"] = self.mask_loss_weight * self._mask_loss(out["mask_features"], targets, image_size)
        losses["loss"] = sum(losses.values())
        return losses

    def _mask_loss(self, features, targets: list[dict], image_size) -> torch.Tensor:
        """ROIs are the ground-truth boxes; mask targets are the ground-truth masks cropped and resized to them."""
        rois = [t["boxes"].float() for t in targets]
        n = sum(len(r) for r in rois)
        if n == 0:
            return sum(p.sum() for p in self.mask_head.parameters()) * 0.0  # 0, graph kept, zero gradients
        logits = self.mask_head(self.mask_head.pool(features, rois, image_size))
        masks = torch.cat([t["masks"] for t in targets]).to(logits.device)
        if len(masks) != n:
            raise ValueError(f"targets hold {n} boxes but {len(masks)} masks; each instance needs both")
        boxes = torch.cat(rois)
        idx = torch.arange(n, device=boxes.device, dtype=boxes.dtype)[:, None]
        m = self.mask_head.mask_size
        target = roi_align(masks[:, None].float(), torch.cat([idx, boxes], 1), (m, m), 1.0, 0, aligned=True)[:, 0]
        labels = torch.cat([t["labels"] for t in targets]).to(logits.device)
        return self.mask_loss(logits, (target >= 0.5).float(), labels)

    def detect(self, out: dict[str, Any], image_size, orig_sizes=None, valid_sizes=None) -> list[dict]:
        """Post-process raw outputs into one dict per image; boxes and masks at the input size, or mapped to
        ``orig_sizes`` (un-padding with ``valid_sizes``) when given."""
        B = out["cls"].shape[0]
        img, boxes, scores, labels = postprocess(out["cls"], out["reg"], out["ctr"], out["points"], out["strides"],
                                                 image_size, self.score_thresh, self.nms_thresh, self.max_detections)
        probs = self.mask_head.mask_probs(out["mask_features"], img, boxes, labels)
        counts = torch.bincount(img, minlength=B).tolist()
        per_img = torch.split(boxes, counts)
        results = []
        for i, (b, s, lab, p) in enumerate(zip(per_img, torch.split(scores, counts), torch.split(labels, counts),
                                               torch.split(probs, counts))):
            h, w = image_size
            if orig_sizes is not None:
                oh, ow = (int(v) for v in orig_sizes[i])
                vh, vw = (int(v) for v in valid_sizes[i]) if valid_sizes is not None else (h, w)
                b = b * torch.tensor([ow / vw, oh / vh, ow / vw, oh / vh], device=b.device)
                h, w = oh, ow
            masks = paste_masks(p, b, h, w) >= self.mask_threshold
            res = {"boxes": b, "labels": lab, "scores": s, "masks": masks.to(torch.uint8)}
            if self.category_ids:
                res["category_ids"] = torch.tensor(self.category_ids, device=lab.device)[lab]
            results.append(res)
        return results

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """One dict per image: ``boxes [N,4]`` xyxy, ``labels [N]`` (0..C-1), ``scores [N]``, ``masks [N,H,W]``
        binary (uint8) at the input resolution; plus ``category_ids [N]`` when the dataset mapping is known."""
        was_training = self.training
        self.eval()
        try:
            return self.detect(self(images), tuple(images.shape[-2:]))
        finally:
            self.train(was_training)

    # steps -------------------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        images = batch["image"]
        out = self(images)
        losses = self.compute_losses(out, batch["targets"], tuple(images.shape[-2:]))
        if self.finite_or_skip(losses["loss"]) is None:
            return None  # skipped: nothing logged, weights unchanged
        bs = images.shape[0]
        self.log("train/loss", losses["loss"], on_step=True, on_epoch=True, prog_bar=True, batch_size=bs)
        for k in ("loss_cls", "loss_reg", "loss_ctr", "loss_mask"):
            self.log(f"train/{k}", losses[k], on_step=True, on_epoch=True, batch_size=bs)
        return losses["loss"]

    def _eval_step(self, batch: dict[str, Any], stage: str):
        images = batch["image"]
        size = tuple(images.shape[-2:])
        out = self(images)
        losses = self.compute_losses(out, batch["targets"], size)
        self.log(f"{stage}/loss", losses["loss"], on_step=False, on_epoch=True, batch_size=images.shape[0],
                 sync_dist=True)
        metrics = list(self.metric_manager.for_stage(stage))
        if metrics:
            preds = self.detect(out, size, batch.get("orig_size"), batch.get("valid_size"))
            targets = batch.get("orig_targets") or batch["targets"]
            preds = [{"boxes": p["boxes"], "scores": p["scores"], "labels": p["labels"], "masks": p["masks"].bool()}
                     for p in preds]
            tg = [{"boxes": t["boxes"].float(), "labels": t["labels"], "masks": t["masks"].bool(),
                   "iscrowd": t["iscrowd"].long()} for t in targets]
            for _, metric in metrics:
                metric.update(preds, tg)
        return losses["loss"]

    def validation_step(self, batch, batch_idx):
        return self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        return self._eval_step(batch, "test")

    def predict_step(self, batch, batch_idx: int = 0, dataloader_idx: int = 0):
        if isinstance(batch, torch.Tensor):
            return self.predict(batch)
        images = batch["image"]
        return self.detect(self(images), tuple(images.shape[-2:]), batch.get("orig_size"), batch.get("valid_size"))

    def _log_dict_metrics(self, stage: str):
        for cfg, metric in self.metric_manager.for_stage(stage):
            values = metric.compute()
            metric.reset()
            if not isinstance(values, dict):
                self.log(f"{stage}/{cfg.name}", values, prog_bar=cfg.prog_bar)
                continue
            # "mask_map" -> mask_map, mask_map_50, ..., mask_mar_100; another name -> <name>_map, <name>_mar_100
            prefix = cfg.name[:-3] if cfg.name.endswith("map") else f"{cfg.name}_"
            for k, v in values.items():
                if not isinstance(v, torch.Tensor) or v.numel() != 1 or k == "classes":
                    continue
                name = prefix + k
                self.log(f"{stage}/{name}", v.float(), prog_bar=cfg.prog_bar and k in ("map", "map_50"),
                         sync_dist=True)

    def on_validation_epoch_end(self):
        self._log_dict_metrics("val")

    def on_test_epoch_end(self):
        self._log_dict_metrics("test")

    def on_fit_start(self):
        super().on_fit_start()
        dm = getattr(self.trainer, "datamodule", None)
        ids = getattr(dm, "category_ids", None)
        if ids and not self.category_ids:
            self.category_ids = list(ids)
            self.hparams["category_ids"] = list(ids)
