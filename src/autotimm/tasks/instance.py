"""InstanceSegmentor: the Lightning task that trains an instance architecture (``autotimm.models``: FCOS + ROI mask
head by default, Mask R-CNN, or any model following ``InstanceModelBase``). The task builds the model from its spec
(or receives one) and owns metrics, logging, optimizer and scheduler; the model owns its losses and post-processing."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import FeatureBackboneConfig, TimmFeatureBackbone, as_backbone_config, resolve_preprocess
from ..heads.fcos import FCOSHead
from ..heads.mask import MaskHead
from ..losses.detection import InstanceSegmentationLoss
from ..metrics import MetricConfig
from ..models.base import InstanceModelBase, loss_name, to_original
from ..models.fcos_instance import FCOSInstanceModel
from ..training.logging_config import LoggingConfig
from ..tta import TTA, as_tta, slide_instances
from ..utils import plain
from .base import CHECKPOINT_KEY, BaseTask, Factory, build_component, component_spec

# the seed's FCOS arguments and their defaults: they build the default architecture; with ``architecture=`` they
# belong in that spec
FCOS_DEFAULTS: dict[str, Any] = {
    "fpn_channels": 256, "head_num_convs": 4, "mask_size": 28, "roi_pool_size": 14, "mask_loss_weight": 1.0,
    "focal_alpha": 0.25, "focal_gamma": 2.0, "cls_loss_weight": 1.0, "reg_loss_weight": 1.0,
    "centerness_loss_weight": 1.0, "score_thresh": 0.05, "nms_thresh": 0.5, "max_detections_per_image": 100,
    "mask_threshold": 0.5, "center_radius": 1.5, "pre_nms_top_k": 1000, "mask_rois_per_image": None,
    "head": None, "mask_head": None, "loss": None}
LOSS_ARGS = ("focal_alpha", "focal_gamma", "cls_loss_weight", "reg_loss_weight", "centerness_loss_weight",
             "mask_loss_weight")


def fcos_spec(args: dict[str, Any]) -> dict[str, Any]:
    """The default architecture's spec (``FCOSInstanceModel``) from the seed's arguments, as plain data."""
    head = component_spec(args["head"], "head")
    if head is None:
        head = {"_target_": _path(FCOSHead), "num_convs": args["head_num_convs"]}
    mask_head = component_spec(args["mask_head"], "mask_head") or {"_target_": _path(MaskHead)}
    mask_head.setdefault("mask_size", args["mask_size"])
    mask_head.setdefault("roi_pool_size", args["roi_pool_size"])
    loss = component_spec(args["loss"], "loss") or {"_target_": _path(InstanceSegmentationLoss)}
    for key in LOSS_ARGS:
        loss.setdefault(key, args[key])
    for name in ("mask_size", "roi_pool_size"):
        v = mask_head[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    spec = {"_target_": _path(FCOSInstanceModel), "fpn_channels": args["fpn_channels"],
            "head_num_convs": args["head_num_convs"], "head": {**head, "_partial_": True},
            "mask_head": {**mask_head, "_partial_": True}, "loss": {**loss, "_partial_": True}}
    for key in ("score_thresh", "nms_thresh", "max_detections_per_image", "mask_threshold", "center_radius",
                "pre_nms_top_k", "mask_rois_per_image"):
        spec[key] = args[key]
    return spec


class InstanceSegmentor(BaseTask):
    """Instance segmentation on any timm backbone, with the architecture as a plug-in.

    The architecture is ``architecture``: a spec (a class or ``functools.partial`` of one, or a ``{"_target_": ...,
    **kwargs}`` dict; Hydra's ``conf/arch/*.yaml``) called with ``backbone`` (the timm feature backbone this task
    builds from ``backbone``) and ``num_classes``, returning an ``InstanceModelBase``
    (``autotimm.models.FCOSInstanceModel``, ``autotimm.models.MaskRCNNModel``, or a user's own). It is kept in the
    hyper-parameters as plain data, so a checkpoint rebuilds it.

    Without ``architecture``, the seed's arguments build FCOS + Mask R-CNN's per-ROI mask head, as the API reference
    describes: fpn_channels, head_num_convs, mask_size, roi_pool_size, mask_loss_weight, focal_alpha, focal_gamma,
    cls_loss_weight, reg_loss_weight, centerness_loss_weight, score_thresh, nms_thresh, max_detections_per_image,
    mask_threshold, plus ``center_radius``, ``pre_nms_top_k``, ``mask_rois_per_image`` and the factories ``head``
    (FCOS head), ``mask_head`` (``RoIMaskHead`` contract; ``SharedMaskHead`` is the cheaper variant) and ``loss``
    (``InstanceSegmentationLoss``; the loss-weight arguments fill what it leaves out). With ``architecture``, these
    belong in its spec, and setting them here is an error.

    Also: metrics, logging_config, lr, weight_decay, optimizer, scheduler, freeze_backbone, compile_model,
    compile_kwargs (as ``SemanticSegmentor``), ``category_ids`` (label -> dataset category id, filled from the
    datamodule at fit time), ``channels_last``, ``preprocess``, ``model`` (a ready ``InstanceModelBase`` to train
    instead; not saved in the hyper-parameters) and ``init_from`` (a checkpoint to fine-tune from).

    The task logs every loss the model returns (``train/loss_<name>``) and their sum (``train/loss``); it weights
    nothing. Post-processing settings live on the model: ``task.model.set_postprocess(score_thresh=0.5)``.

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
        architecture: Factory | dict | None = None,
    ):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        seed_args = {k: v for k, v in locals().items() if k in FCOS_DEFAULTS}
        if architecture is None:
            architecture = fcos_spec(seed_args)
        else:
            architecture = component_spec(architecture, "architecture")
            changed = sorted(k for k, v in seed_args.items() if plain(v) != FCOS_DEFAULTS[k])
            if changed:
                raise ValueError(f"InstanceSegmentor: {changed} configure the default FCOS architecture; with "
                                 f"architecture={architecture['_target_']!r} set them in the architecture spec")
        backbone_cfg = as_backbone_config(backbone)
        preprocess = plain(preprocess)
        category_ids = plain(category_ids)
        if model is None:
            net = TimmFeatureBackbone(backbone_cfg, image_size=(preprocess or {}).get("image_size"))
            backbone_cfg = net.config  # output_stride "auto" resolved (native: the FPN fuses every level)
            model = build_component(architecture, "architecture", backbone=net, num_classes=num_classes)
        if not isinstance(model, InstanceModelBase):
            raise TypeError(f"architecture: {type(model).__name__} is not an autotimm.models.InstanceModelBase; an "
                            f"instance architecture subclasses it and implements forward(images, targets=None)")
        if category_ids:
            model.category_ids = list(category_ids)
        model.channels_last = channels_last is True
        preprocess = resolve_preprocess(model.backbone, preprocess)
        backbone = {**backbone_cfg.to_dict(), "pretrained": False, "weights": None}  # the checkpoint holds them
        metrics = self._metrics_as_data(metrics)
        if isinstance(logging_config, LoggingConfig):
            logging_config = logging_config.to_dict()
        logging_config = plain(logging_config)
        optimizer, scheduler, compile_kwargs = plain(optimizer), plain(scheduler), plain(compile_kwargs)
        # the architecture's spec stands for the seed's FCOS arguments: a checkpoint rebuilds the model from it alone
        self.save_hyperparameters(ignore=["model", "init_from", *FCOS_DEFAULTS])

        self.num_classes = num_classes
        self.channels_last = channels_last
        self.model = model
        if init_from:  # fine-tuning: every weight whose name and shape fit
            self.init_weights_from(init_from)
        self._setup_common(lr=lr, weight_decay=weight_decay, optimizer=optimizer, scheduler=scheduler,
                           metrics=metrics, logging_config=logging_config,
                           # COCO mAP over as many detections as the model keeps (dense scenes: up to 1000/image)
                           metric_defaults={"max_detection_thresholds": self._max_det_thresholds()},
                           freeze_backbone=freeze_backbone, compile_model=compile_model,
                           compile_kwargs=compile_kwargs)
        if channels_last not in (True, False, "auto"):
            raise ValueError(f"channels_last must be true, false or 'auto', got {channels_last!r}")
        if channels_last is True:
            self._apply_channels_last(True)
        self.set_tta(None)
        # the MatchingAccuracy threshold a ScoreThresholdCalibration chose (None: the metrics' own); checkpoints keep it
        self.calibrated_score_thresh: float | None = None

    def model_spec(self) -> dict[str, Any]:
        return {"backbone": self.hparams["backbone"], "architecture": self.hparams["architecture"]}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.calibrated_score_thresh is not None:
            checkpoint[CHECKPOINT_KEY]["score_thresh"] = self.calibrated_score_thresh

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A calibrated score threshold in the checkpoint goes back onto the MatchingAccuracy metrics (eval.py)."""
        super().on_load_checkpoint(checkpoint)
        thresh = (checkpoint.get(CHECKPOINT_KEY) or {}).get("score_thresh")
        if thresh is not None:
            from ..training.calibration import set_score_thresh

            set_score_thresh(self, float(thresh))

    # test-time sliding windows ---------------------------------------------------------------------------------
    def set_tta(self, tta: dict | TTA | None, stages=("test",)) -> None:
        """Score ``stages`` with sliding-window inference (``tta.mode=slide``: windows of ``crop_size`` every
        ``stride`` over the evaluation image rescaled by ``tta.scales[0]``, detections merged across windows:
        ``autotimm.tta.slide_instances``), as ``eval.py tta.mode=slide`` does. ``None`` is the plain forward."""
        tta = as_tta(plain(tta))
        if tta is not None and not tta.identity and (tta.mode != "slide" or tta.flip or len(tta.scales) != 1):
            raise ValueError(f"tta: {tta}: instance models take mode=slide at one scale without flip")
        self.tta = None if tta is None or tta.identity else tta
        self.tta_stages = [stages] if isinstance(stages, str) else list(stages)

    def _slide_preds(self, batch: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
        tta, images = self.tta, batch["image"]
        post = self.model.postprocess
        preds = []
        for i in range(images.shape[0]):  # a loop over images: each is slid over at its own size
            vh, vw = (int(v) for v in batch["valid_size"][i])
            x = images[i: i + 1, :, :vh, :vw]
            s = tta.scales[0]
            if s != 1.0:
                x = F.interpolate(x, size=(max(1, round(vh * s)), max(1, round(vw * s))), mode="bilinear",
                                  align_corners=False)
            det = slide_instances(self.model.predict, x, tta.crop_size, tta.stride,
                                  float(post.get("nms_thresh", 0.5)), int(post.get("max_detections_per_image", 100)))
            preds.append(to_original(det, 0, batch["orig_size"][i: i + 1], torch.tensor([list(x.shape[-2:])])))
        return preds

    # the default architecture's parts (FCOS), for convenience ------------------------------------------------------
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
        return self.model.compiled_modules()

    # inference ---------------------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, targets: list[dict] | None = None):
        """The model's forward: its named losses given ``targets``, else one detection dict per image."""
        return self.model(images, targets)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """One dict per image: ``boxes [N,4]`` xyxy, ``labels [N]`` (0..C-1), ``scores [N]``, ``masks [N,H,W]``
        binary (uint8) at the input resolution; plus ``category_ids [N]`` when the dataset mapping is known."""
        return self.model.predict(images)

    # steps -------------------------------------------------------------------------------------------------------
    def _log_losses(self, stage: str, losses: dict[str, torch.Tensor], batch_size: int) -> torch.Tensor:
        """Log the sum (``<stage>/loss``) and, in training, every named loss the model returned."""
        total = sum(losses.values())
        train = stage == "train"
        self.log(f"{stage}/loss", total, on_step=train, on_epoch=True, prog_bar=train, batch_size=batch_size,
                 sync_dist=not train)
        for key, value in losses.items():
            self.log(f"{stage}/{loss_name(key)}", value, on_step=train, on_epoch=True, batch_size=batch_size,
                     sync_dist=not train)
        return total

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        images = batch["image"]
        losses = self.model(images, batch["targets"])
        total = sum(losses.values())
        if self.finite_or_skip(total) is None:
            return None  # skipped: nothing logged, weights unchanged
        return self._log_losses("train", losses, images.shape[0])

    def _eval_step(self, batch: dict[str, Any], stage: str, batch_idx: int = 0):
        images = batch["image"]
        metrics = list(self.metric_manager.for_stage(stage))
        slide = getattr(self, "tta", None) is not None and stage in self.tta_stages
        if metrics and slide:
            losses, preds = self.model(images, batch["targets"]), self._slide_preds(batch)
        elif metrics:  # one backbone pass for the loss and the detections where the model can share it
            losses, preds = self.model.losses_and_detections(images, batch["targets"], batch.get("orig_size"),
                                                             batch.get("valid_size"))
        if metrics:
            targets = batch.get("orig_targets") or batch["targets"]
            preds = [{"boxes": p["boxes"], "scores": p["scores"], "labels": p["labels"], "masks": p["masks"].bool()}
                     for p in preds]
            tg = [{"boxes": t["boxes"].float(), "labels": t["labels"], "masks": t["masks"].bool(),
                   "iscrowd": t["iscrowd"].long()} for t in targets]
            for _, metric in metrics:
                metric.update(preds, tg)
        else:
            losses = self.model(images, batch["targets"])
        loss = self._log_losses(stage, losses, images.shape[0])
        if self.keep_example_outputs and batch_idx == 0:  # for the W&B panels: detections at the input size
            return {"loss": loss, "detections": self.model.detect(images)}
        return loss

    def validation_step(self, batch, batch_idx):
        return self._eval_step(batch, "val", batch_idx)

    def test_step(self, batch, batch_idx):
        return self._eval_step(batch, "test", batch_idx)

    def predict_step(self, batch, batch_idx: int = 0, dataloader_idx: int = 0):
        if isinstance(batch, torch.Tensor):
            return self.predict(batch)
        return self.model.predict(batch["image"], batch.get("orig_size"), batch.get("valid_size"))

    def _max_det_thresholds(self) -> list[int]:
        """COCO mAP's ``max_detection_thresholds``: as many detections as the model keeps (dense scenes: up to
        1000/image), at least COCO's 100."""
        return [1, 10, max(100, int(self.model.postprocess.get("max_detections_per_image", 100)))]

    def _log_dict_metrics(self, stage: str):
        # read at compute time, so a later model.set_postprocess(max_detections_per_image=...) is scored over its count
        self.metric_manager.set_default("max_detection_thresholds", self._max_det_thresholds())
        for cfg, metric in self.metric_manager.for_stage(stage):
            values = metric.compute()
            metric.reset()
            if not isinstance(values, dict):
                self.log(f"{stage}/{cfg.name}", values, prog_bar=cfg.prog_bar)
                continue
            # "mask_map" -> mask_map, mask_map_50, ..., mask_mar_100; another name -> <name>_map, <name>_mar_100;
            # a metric whose keys are already full names (flat_keys: MatchingAccuracy's dsb_score) -> the keys
            prefix = "" if getattr(metric, "flat_keys", False) else \
                cfg.name[:-3] if cfg.name.endswith("map") else f"{cfg.name}_"
            for k, v in values.items():
                if not isinstance(v, torch.Tensor) or v.numel() != 1 or k == "classes":
                    continue
                name = prefix + k
                self.log(f"{stage}/{name}", v.float(), prog_bar=cfg.prog_bar and k in ("map", "map_50", "dsb_score"),
                         sync_dist=True)

    def on_validation_epoch_end(self):
        self._log_dict_metrics("val")

    def on_test_epoch_end(self):
        self._log_dict_metrics("test")

    def on_fit_start(self):
        super().on_fit_start()
        dm = getattr(self.trainer, "datamodule", None)
        ids = getattr(dm, "category_ids", None)
        if ids and not self.model.category_ids:
            self.model.category_ids = list(ids)
            self.hparams["category_ids"] = list(ids)


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
