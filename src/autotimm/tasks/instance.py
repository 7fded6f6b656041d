"""InstanceSegmentor: the Lightning task that trains an ``InstanceModel`` (timm backbone -> FPN -> FCOS head + ROI
mask head). The task builds the model (or receives one) and owns metrics, logging, optimizer and scheduler."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..backbones import FeatureBackboneConfig, TimmFeatureBackbone, as_backbone_config, resolve_preprocess
from ..heads.fcos import FCOSHead
from ..heads.fpn import FPN
from ..heads.mask import MaskHead
from ..losses.detection import InstanceSegmentationLoss
from ..metrics import MetricConfig
from ..models.instance import InstanceModel
from ..training.logging_config import LoggingConfig
from ..utils import plain
from .base import BaseTask, Factory, build_component, component_spec


class InstanceSegmentor(BaseTask):
    """Instance segmentation: FCOS boxes and classes, Mask R-CNN-style masks from ROI-aligned FPN features.

    Args (see the API reference table): backbone, num_classes (object classes, no background), fpn_channels,
    head_num_convs, mask_size, roi_pool_size, mask_loss_weight, focal_alpha, focal_gamma, cls_loss_weight,
    reg_loss_weight, centerness_loss_weight, score_thresh, nms_thresh, max_detections_per_image, mask_threshold,
    metrics, logging_config, lr, weight_decay, optimizer, scheduler, freeze_backbone, compile_model, compile_kwargs;
    plus ``center_radius`` (FCOS centre sampling), ``pre_nms_top_k`` (candidates per image before NMS, >=
    ``max_detections_per_image``; dense scenes: ``experiment=instance_dense``), ``mask_rois_per_image`` (the
    mask loss trains on at most that many instances per image, drawn at random; ``None``: all), ``category_ids``
    (label -> dataset category id, filled from the datamodule at fit time), ``channels_last`` and ``preprocess`` (as
    in ``SemanticSegmentor``), and factories
    (a class, a ``functools.partial`` or a ``{"_target_": ...}`` dict, as ``SemanticSegmentor``'s ``head=``):

    - ``head``: the FCOS head, called with ``in_channels``, ``num_classes``, ``num_convs``, ``num_levels``
      (default ``FCOSHead`` with ``fpn_channels`` and ``head_num_convs``);
    - ``mask_head``: the mask head (``RoIMaskHead`` contract), called with ``in_channels``, ``num_classes``,
      ``featmap_names``, ``featmap_strides``; its ``mask_size`` / ``roi_pool_size`` come from the factory when it
      sets them, else from this task's arguments (default ``MaskHead``, Mask R-CNN's per-ROI head;
      ``SharedMaskHead`` is the cheaper variant: ``conf/head/mask_shared.yaml``);
    - ``loss``: the loss (default ``InstanceSegmentationLoss``); the loss-weight arguments fill what it leaves out;
    - ``model``: a ready ``InstanceModel`` to train instead (not saved in the hyper-parameters);
    - ``init_from``: a checkpoint to fine-tune from, as in ``SemanticSegmentor``.

    Metrics: a ``MeanAveragePrecision`` config named ``mask_map`` logs ``<stage>/mask_map``, ``<stage>/mask_map_50``,
    ``<stage>/mask_map_75``, ``<stage>/mask_mar_100``... (every scalar it computes, prefixed by the name less its
    ``map``); a name not ending in ``map`` prefixes the keys whole (``segm`` -> ``segm_map_50``).
    """

    task_kind = "instance"

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
        category_ids: list[int] | None = None,
        channels_last: bool | str = False,
        preprocess: dict | None = None,
        head: Factory | dict | None = None,
        mask_head: Factory | dict | None = None,
        loss: Factory | dict | None = None,
        model: nn.Module | None = None,
        init_from: str | None = None,
        pre_nms_top_k: int = 1000,
        mask_rois_per_image: int | None = None,
    ):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        head = component_spec(head, "head") or {"_target_": _path(FCOSHead), "num_convs": head_num_convs}
        mask_head = component_spec(mask_head, "mask_head") or {"_target_": _path(MaskHead)}
        mask_head.setdefault("mask_size", mask_size)
        mask_head.setdefault("roi_pool_size", roi_pool_size)
        mask_size, roi_pool_size = mask_head["mask_size"], mask_head["roi_pool_size"]
        loss = component_spec(loss, "loss") or {"_target_": _path(InstanceSegmentationLoss)}
        for key, value in (("focal_alpha", focal_alpha), ("focal_gamma", focal_gamma),
                           ("cls_loss_weight", cls_loss_weight), ("reg_loss_weight", reg_loss_weight),
                           ("centerness_loss_weight", centerness_loss_weight), ("mask_loss_weight", mask_loss_weight)):
            loss.setdefault(key, value)
        for name, v in (("mask_size", mask_size), ("roi_pool_size", roi_pool_size), ("fpn_channels", fpn_channels),
                        ("max_detections_per_image", max_detections_per_image)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        backbone_cfg = as_backbone_config(backbone)
        preprocess = plain(preprocess)
        category_ids = plain(category_ids)
        if model is None:
            net = TimmFeatureBackbone(backbone_cfg, image_size=(preprocess or {}).get("image_size"))
            backbone_cfg = net.config  # output_stride "auto" resolved (native: the FPN fuses every level)
            fpn = FPN(net.channels, net.reductions, fpn_channels)
            model = InstanceModel(
                net, fpn,
                build_component(head, "head", in_channels=fpn_channels, num_classes=num_classes,
                                num_levels=len(fpn.strides)),
                build_component(mask_head, "mask_head", in_channels=fpn_channels, num_classes=num_classes,
                                featmap_names=fpn.names[:3], featmap_strides=fpn.strides[:3]),
                build_component(loss, "loss"), num_classes, score_thresh, nms_thresh, max_detections_per_image,
                mask_threshold, center_radius, category_ids, channels_last is True, pre_nms_top_k,
                mask_rois_per_image)
        preprocess = resolve_preprocess(model.backbone, preprocess)
        backbone = {**backbone_cfg.to_dict(), "pretrained": False}
        metrics = self._metrics_as_data(metrics)
        if isinstance(logging_config, LoggingConfig):
            logging_config = logging_config.to_dict()
        logging_config = plain(logging_config)
        optimizer, scheduler, compile_kwargs = plain(optimizer), plain(scheduler), plain(compile_kwargs)
        self.save_hyperparameters(ignore=["model", "init_from"])

        self.num_classes = num_classes
        self.channels_last = channels_last
        self.model = model
        if init_from:  # fine-tuning: every weight whose name and shape fit
            self.init_weights_from(init_from)
        self._setup_common(lr=lr, weight_decay=weight_decay, optimizer=optimizer, scheduler=scheduler,
                           metrics=metrics, logging_config=logging_config,
                           # COCO mAP over as many detections as the model keeps (dense scenes: up to 1000/image)
                           metric_defaults={"max_detection_thresholds": [1, 10, max(100, max_detections_per_image)]},
                           freeze_backbone=freeze_backbone, compile_model=compile_model,
                           compile_kwargs=compile_kwargs)
        if channels_last not in (True, False, "auto"):
            raise ValueError(f"channels_last must be true, false or 'auto', got {channels_last!r}")
        if channels_last is True:
            self._apply_channels_last(True)

    @property
    def fpn(self) -> nn.Module:
        return self.model.fpn

    @property
    def head(self) -> nn.Module:
        return self.model.head

    @property
    def mask_head(self) -> nn.Module:
        return self.model.mask_head

    @property
    def mask_loss_weight(self) -> float:
        return self.model.criterion.mask_loss_weight

    @property
    def category_ids(self) -> list[int] | None:
        return self.model.category_ids

    def compiled_modules(self):
        return [self.model.backbone, self.model.fpn, self.model.head]

    # inference ---------------------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, targets: list[dict] | None = None):
        """``InstanceModel.forward``: the losses given ``targets``, else one detection dict per image."""
        return self.model(images, targets)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """One dict per image: ``boxes [N,4]`` xyxy, ``labels [N]`` (0..C-1), ``scores [N]``, ``masks [N,H,W]``
        binary (uint8) at the input resolution; plus ``category_ids [N]`` when the dataset mapping is known."""
        return self.model.predict(images)

    # steps -------------------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        images = batch["image"]
        losses = self.model(images, batch["targets"])
        if self.finite_or_skip(losses["loss"]) is None:
            return None  # skipped: nothing logged, weights unchanged
        bs = images.shape[0]
        self.log("train/loss", losses["loss"], on_step=True, on_epoch=True, prog_bar=True, batch_size=bs)
        for k in ("loss_cls", "loss_reg", "loss_ctr", "loss_mask"):
            self.log(f"train/{k}", losses[k], on_step=True, on_epoch=True, batch_size=bs)
        return losses["loss"]

    def _eval_step(self, batch: dict[str, Any], stage: str, batch_idx: int = 0):
        images = batch["image"]
        out = self.model.features(images)  # one forward for the loss, the metrics and the W&B panels
        losses = self.model.compute_losses(out, batch["targets"])
        self.log(f"{stage}/loss", losses["loss"], on_step=False, on_epoch=True, batch_size=images.shape[0],
                 sync_dist=True)
        metrics = list(self.metric_manager.for_stage(stage))
        if metrics:
            preds = self.model.detect(out, batch.get("orig_size"), batch.get("valid_size"))
            targets = batch.get("orig_targets") or batch["targets"]
            preds = [{"boxes": p["boxes"], "scores": p["scores"], "labels": p["labels"], "masks": p["masks"].bool()}
                     for p in preds]
            tg = [{"boxes": t["boxes"].float(), "labels": t["labels"], "masks": t["masks"].bool(),
                   "iscrowd": t["iscrowd"].long()} for t in targets]
            for _, metric in metrics:
                metric.update(preds, tg)
        if self.keep_example_outputs and batch_idx == 0:  # for the W&B panels: detections at the input size
            return {"loss": losses["loss"], "detections": self.model.detect(out)}
        return losses["loss"]

    def validation_step(self, batch, batch_idx):
        return self._eval_step(batch, "val", batch_idx)

    def test_step(self, batch, batch_idx):
        return self._eval_step(batch, "test", batch_idx)

    def predict_step(self, batch, batch_idx: int = 0, dataloader_idx: int = 0):
        if isinstance(batch, torch.Tensor):
            return self.predict(batch)
        out = self.model.features(batch["image"])
        return self.model.detect(out, batch.get("orig_size"), batch.get("valid_size"))

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
            self.model.category_ids = list(ids)
            self.hparams["category_ids"] = list(ids)


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
