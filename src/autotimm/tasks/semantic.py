"""SemanticSegmentor: the Lightning task that trains a ``SemanticModel`` (timm backbone -> head -> per-pixel logits).

The task holds no model math: it builds the model (or receives one), and owns the loss, metrics, logging,
optimizer and scheduler."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchmetrics.classification import JaccardIndex

from ..backbones import FeatureBackboneConfig, TimmFeatureBackbone, as_backbone_config, resolve_preprocess
from ..data.transforms import paste_classes
from ..heads import HEADS
from ..heads.fcn import FCNHead
from ..losses import LOSSES
from ..metrics import MetricConfig
from ..models.semantic import SemanticModel, logits_to_original
from ..training.logging_config import LoggingConfig
from ..tta import TTA, as_tta, tta_logits
from ..utils import check_class_names, metric_keys, plain
from .base import BaseTask, Factory, build_component, component_spec, named_choice


class SemanticSegmentor(BaseTask):
    """Semantic segmentation on any timm backbone.

    Args:
        backbone: timm model name or ``FeatureBackboneConfig``.
        num_classes: number of classes (background included where the dataset has one).
        head_type: ``"deeplabv3plus"`` or ``"fcn"``.
        loss_type: ``"ce"``, ``"dice"``, ``"focal"``, ``"tversky"``, ``"ohem"``, ``"lovasz"`` or ``"combined"``
            (CE + Dice).
        dice_weight / ce_weight: weights of the combined loss.
        ignore_index: label ignored by loss and metrics (void, padding).
        metrics: ``MetricConfig`` list; ``num_classes`` and ``ignore_index`` are passed to metrics that take them.
        lr / weight_decay: optimizer settings (no weight decay on norms and biases).
        optimizer: ``adamw``, ``adam``, ``sgd``, ``rmsprop`` or a dict (``{"name": "sgd", "momentum": 0.9}``,
            ``{"class": "torch.optim.NAdam", ...}``).
        scheduler: ``cosine`` (per step, optional ``warmup_steps``), ``poly``, ``onecycle``, ``step``,
            ``multistep``, ``none``/None, or a dict with ``name`` or ``class``.
        freeze_backbone: train the head only (backbone weights and BatchNorm statistics fixed).
        logging_config: ``LoggingConfig`` (learning rate, gradient norm, weight norm).
        compile_model: ``torch.compile`` the model in place when training on CUDA; ``"force"`` compiles anywhere.
        compile_kwargs: arguments for ``torch.compile``.
        head: a head factory overriding ``head_type``: a class, a ``functools.partial`` of one, or a
            ``{"_target_": ..., **kwargs}`` dict; it is called with ``in_channels``, ``num_classes``, ``reductions``.
            (Hydra's ``conf/head/*.yaml`` pass this.)
        loss: a loss factory overriding ``loss_type`` (same forms), called with ``num_classes`` and ``ignore_index``.
        class_names: one name per class (default: the attached data module's); per-class metrics are named after
            them (``val/iou_<name>``). ``per_class_metrics``: log the per-class IoU of val and test.
        aux_weight: deep supervision (PSPNet; mmseg's FCN ``auxiliary_head`` at loss weight 0.4): above 0, an FCN
            head (``autotimm.heads.FCNHead``) on backbone level ``aux_level`` (default the second deepest) adds
            ``aux_weight`` x the task's loss of its logits to the training loss. Training only: validation, test,
            ``predict`` and export run the main head alone. A ready ``model`` needs its own ``aux_head``.
        paste_classes / paste_prob: batch-level copy-paste of these class ids in training (ClassMix / DACS's
            paste with a fixed list, ``autotimm.data.transforms.paste_classes``): with probability ``paste_prob`` an
            image receives those classes' pixels and labels from another image of the batch. Default: off.
        tta / tta_stages: test-time augmentation (``{"scales": [...], "flip": ..., "mode": "whole"|"slide",
            "crop_size": ..., "stride": ...}``, ``autotimm.tta.TTA``) for the stages listed (default test only).
        channels_last: run convolutions in channels-last memory format: ``True``, ``False``, or ``"auto"`` = on
            when training on CUDA or under bf16 autocast, off for fp32 on CPU (where oneDNN's fp32 convolutions
            measured up to 23% slower channels-last: ``benchmarks/bench_semantic.py``). Decided at fit start.
        preprocess: overrides of the input preprocessing (``mean``, ``std``, ``interpolation``, ``image_size``,
            ``pad_multiple``); the rest comes from the backbone's timm pretrained config (see
            ``autotimm.backbones.resolve_preprocess``). The resolved values are kept in ``hparams["preprocess"]``
            and used by the data module, ``eval.py``, ``predict.py`` and export alike. ``image_size`` also builds
            fixed-size backbones (NesT, ResMLP, LeViT...) for that size.
        model: a ready ``SemanticModel`` (or any module with the same contract) to train instead of building one
            from ``backbone`` and ``head``; it is not saved in the hyper-parameters, so reload such a checkpoint
            with ``load_from_checkpoint(path, model=...)``.
        init_from: a checkpoint to fine-tune from: every weight whose name and shape fit is loaded (a model
            trained with another class count keeps all but its classifier), the rest keep their initialisation,
            and the skipped keys are logged with the reason (``init_weights_from``). Not saved in the
            hyper-parameters: the new checkpoint holds the weights.

    The network is ``self.model`` (a plain ``nn.Module``); ``self.backbone`` and ``self.head`` point into it.
    """

    task_kind = "semantic"

    def __init__(
        self,
        backbone: str | FeatureBackboneConfig | dict,
        num_classes: int,
        head_type: str = "deeplabv3plus",
        loss_type: str = "combined",
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        ignore_index: int = 255,
        metrics: list[MetricConfig | dict] | None = None,
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
        optimizer: str | dict = "adamw",
        scheduler: str | dict | None = "cosine",
        freeze_backbone: bool = False,
        logging_config: LoggingConfig | dict | None = None,
        compile_model: bool | str = True,
        compile_kwargs: dict | None = None,
        head: Factory | dict | None = None,
        loss: Factory | dict | None = None,
        channels_last: bool | str = False,
        preprocess: dict | None = None,
        model: nn.Module | None = None,
        init_from: str | None = None,
        class_names: list[str] | None = None,
        per_class_metrics: bool = True,
        tta: dict | None = None,
        tta_stages: Sequence[str] = ("test",),
        aux_weight: float = 0.0,
        aux_level: int = -2,
        paste_classes: Sequence[int] | None = None,
        paste_prob: float = 0.5,
    ):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        class_names = check_class_names(class_names, num_classes)
        head_type = named_choice(head_type, HEADS, "head_type")
        loss_type = named_choice(loss_type, LOSSES, "loss_type")
        backbone_cfg = as_backbone_config(backbone)
        head_spec = component_spec(head, "head") or {"_target_": _path(HEADS[head_type])}
        loss_spec = component_spec(loss, "loss") or _default_loss_spec(loss_type, ce_weight, dice_weight)
        preprocess = plain(preprocess)
        aux_weight = float(aux_weight)
        if not aux_weight >= 0:
            raise ValueError(f"aux_weight must be a number >= 0, got {aux_weight!r}")
        paste_classes = [int(c) for c in paste_classes] if paste_classes else None
        if paste_classes and any(not 0 <= c < num_classes for c in paste_classes):
            raise ValueError(f"paste_classes {paste_classes}: expected class ids in 0..{num_classes - 1}")
        if not 0.0 <= float(paste_prob) <= 1.0:
            raise ValueError(f"paste_prob must be in [0, 1], got {paste_prob!r}")
        if model is None:
            net = TimmFeatureBackbone(backbone_cfg, image_size=(preprocess or {}).get("image_size"),
                                      preferred_output_stride=preferred_output_stride(head_spec))
            backbone_cfg = net.config  # output_stride "auto" resolved
            head_module = build_component(head_spec, "head", in_channels=net.channels, num_classes=num_classes,
                                          reductions=net.reductions)
            aux_head = None
            if aux_weight > 0:
                if not -len(net.channels) <= aux_level < len(net.channels):
                    raise ValueError(f"aux_level {aux_level} is not one of the backbone's {len(net.channels)} levels "
                                     f"(expected -{len(net.channels)}..{len(net.channels) - 1}; channels "
                                     f"{list(net.channels)})")
                aux_head = FCNHead(net.channels[aux_level], num_classes)
            model = SemanticModel(net, head_module, channels_last is True, aux_head=aux_head, aux_level=aux_level)
        elif aux_weight > 0 and getattr(model, "aux_head", None) is None:
            raise ValueError("aux_weight > 0 with a ready model: the model needs an aux_head (SemanticModel(..., "
                             "aux_head=...)), or set aux_weight=0")
        preprocess = resolve_preprocess(model.backbone, preprocess)

        # hparams are plain data; weights come from the checkpoint, so reloading never downloads them again
        backbone = {**backbone_cfg.to_dict(), "pretrained": False, "weights": None}  # the checkpoint holds them
        head, loss = head_spec, loss_spec
        metrics = self._metrics_as_data(metrics)
        if isinstance(logging_config, LoggingConfig):
            logging_config = logging_config.to_dict()
        logging_config = plain(logging_config)
        optimizer, scheduler, compile_kwargs = plain(optimizer), plain(scheduler), plain(compile_kwargs)
        self.save_hyperparameters(ignore=["model", "init_from"])

        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.head_type = _name_of(head_spec, HEADS, head_type)
        self.loss_type = _name_of(loss_spec, LOSSES, loss_type)
        self.channels_last = channels_last
        self.aux_weight = aux_weight
        self.paste_classes, self.paste_prob = paste_classes, float(paste_prob)
        self.model = model
        if init_from:  # fine-tuning: every weight whose name and shape fit
            self.init_weights_from(init_from)
        self.criterion = build_component(loss_spec, "loss", num_classes=num_classes, ignore_index=ignore_index)
        self._setup_common(lr=lr, weight_decay=weight_decay, optimizer=optimizer, scheduler=scheduler,
                           metrics=metrics, metric_defaults={"num_classes": num_classes, "ignore_index": ignore_index},
                           logging_config=logging_config, freeze_backbone=freeze_backbone,
                           compile_model=compile_model, compile_kwargs=compile_kwargs)
        if channels_last not in (True, False, "auto"):
            raise ValueError(f"channels_last must be true, false or 'auto', got {channels_last!r}")
        if channels_last is True:
            self._apply_channels_last(True)
        self.class_names = class_names
        self.set_tta(tta, tta_stages)
        # per-class IoU (val/iou_<class name>): the confusion matrix of the same predictions the metrics score;
        # torchmetrics states are not persistent, so checkpoints keep the same keys
        self.per_class = nn.ModuleDict({stage: JaccardIndex(task="multiclass", num_classes=num_classes,
                                                            ignore_index=ignore_index, average="none")
                                        for stage in ("val", "test")}) if per_class_metrics else None

    @property
    def head(self) -> nn.Module:
        return self.model.head

    def model_spec(self) -> dict[str, Any]:
        return {"backbone": self.hparams["backbone"], "head": self.hparams["head"]}

    # test-time augmentation ----------------------------------------------------------------------------------------
    def set_tta(self, tta: dict | TTA | None, stages: Sequence[str] = ("test",)) -> None:
        """Score ``stages`` (``"val"``, ``"test"``) with test-time augmentation (``autotimm.tta.TTA``: ``scales``,
        ``flip``, ``mode`` whole/slide, ``crop_size``, ``stride``): logits of every view averaged at the original
        resolution before the argmax. ``None`` (or one whole view at scale 1) is the plain forward."""
        stages = [stages] if isinstance(stages, str) else list(stages)
        bad = [s for s in stages if s not in ("val", "test")]
        if bad:
            raise ValueError(f"tta_stages: expected 'val' and/or 'test', got {bad}")
        self.tta = as_tta(plain(tta))
        self.tta_stages = stages

    def _tta_for(self, stage: str) -> TTA | None:
        tta = getattr(self, "tta", None)
        return tta if tta is not None and not tta.identity and stage in self.tta_stages else None

    def _tta_preds(self, tta: TTA, batch: dict[str, Any]) -> list[torch.Tensor]:
        """Per image: class ids at the original resolution (or the label's) from the TTA-averaged logits."""
        images = batch["image"]
        multiple = int(self.preprocess.get("pad_multiple") or self.model.backbone.output_stride)
        valid = batch.get("valid_size")
        targets = batch["orig_mask"] if "orig_mask" in batch else batch["mask"]
        return [tta_logits(self.model, images[i: i + 1], tta, multiple,
                           valid_size=valid[i].tolist() if valid is not None else None,
                           out_size=targets[i].shape[-2:]).argmax(1)[0] for i in range(images.shape[0])]

    # class names and per-class IoU -------------------------------------------------------------------------------
    def _adopt_class_names(self):
        """Without names of its own, the model takes the attached data module's (dataset config ``class_names``,
        or the format's own), so they travel in the checkpoint and name the per-class metrics."""
        if self.class_names is None:
            names = getattr(getattr(self._trainer, "datamodule", None), "class_names", None)
            if names and len(names) == self.num_classes:
                self.class_names = list(names)
                self.hparams["class_names"] = list(names)

    def metric_class_keys(self) -> list[str]:
        """The per-class metric suffixes: ``class_names`` made key-safe (lower case, ``_`` for other characters),
        else the class indices."""
        return metric_keys(self.class_names, self.num_classes)

    def on_fit_start(self):
        self._adopt_class_names()
        super().on_fit_start()

    def on_validation_start(self):
        self._adopt_class_names()

    def on_test_start(self):
        self._adopt_class_names()

    def _log_per_class(self, stage: str):
        if self.per_class is None:
            return
        metric = self.per_class[stage]
        if not metric.update_called:
            return
        values = metric.compute()
        for key, v in zip(self.metric_class_keys(), values):
            self.log(f"{stage}/iou_{key}", v, sync_dist=False)
        metric.reset()

    def on_validation_epoch_end(self):
        self._log_per_class("val")

    def on_test_epoch_end(self):
        self._log_per_class("test")

    def compiled_modules(self) -> list[nn.Module]:
        return [self.model.backbone, self.model.head]

    # inference ---------------------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes, H, W]`` at the input resolution (``SemanticModel.forward``)."""
        return self.model(images)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, original_size: Sequence[int] | None = None) -> torch.Tensor:
        """Class ids ``[B, H, W]`` (int64) at the input resolution, or at ``original_size=(H, W)`` when given
        (logits are resized before the argmax, so boundaries stay smooth)."""
        return self.model.predict(images, original_size)

    @staticmethod
    def logits_to_original(logits: torch.Tensor, valid_size: torch.Tensor | None,
                           orig_size: torch.Tensor) -> list[torch.Tensor]:
        """Per image: crop the un-padded region, resize logits to the original size, argmax -> ``[h, w]``."""
        return [lg.argmax(0) for lg in logits_to_original(logits, valid_size, orig_size)]

    # steps -------------------------------------------------------------------------------------------------------
    def training_loss(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training step's loss and the main head's logits: the criterion, plus ``aux_weight`` x the criterion
        of the auxiliary head's logits when deep supervision is on."""
        if self.aux_weight > 0:
            logits, aux_logits = self.model(images, aux=True)
            return self.criterion(logits, masks) + self.aux_weight * self.criterion(aux_logits, masks), logits
        logits = self(images)
        return self.criterion(logits, masks), logits

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        images, masks = batch["image"], batch["mask"]
        if self.paste_classes:
            images, masks = paste_classes(images, masks, self.paste_classes, self.paste_prob)
        loss, logits = self.training_loss(images, masks)
        if self.finite_or_skip(loss) is None:
            return None  # skipped: nothing logged, weights unchanged
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=images.shape[0])
        if any(True for _ in self.metric_manager.for_stage("train")):
            preds = logits.detach().argmax(1)
            for _, metric in self.metric_manager.for_stage("train"):
                metric.update(preds, masks)
            self._log_metrics("train")
        return loss

    def _eval_step(self, batch: dict[str, Any], stage: str, batch_idx: int = 0):
        images, masks = batch["image"], batch["mask"]
        logits = self(images)
        loss = self.criterion(logits, masks)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=stage == "val",
                 batch_size=images.shape[0], sync_dist=True)
        metrics = list(self.metric_manager.for_stage(stage))
        if self.per_class is not None and stage in self.per_class:
            metrics.append((None, self.per_class[stage]))
        tta = self._tta_for(stage)
        if metrics and tta is not None:  # test-time augmentation: one implementation with predict.py (autotimm.tta)
            targets = batch["orig_mask"] if "orig_mask" in batch else masks
            for pred, target in zip(self._tta_preds(tta, batch), targets):
                for _, metric in metrics:
                    metric.update(pred[None], target[None].to(pred.device))
            self._log_metrics(stage, on_step=False)
        elif metrics:
            if "orig_mask" in batch:  # score against the original-resolution labels
                preds = self.logits_to_original(logits, batch.get("valid_size"), batch["orig_size"])
                for pred, target in zip(preds, batch["orig_mask"]):
                    for _, metric in metrics:
                        metric.update(pred[None], target[None].to(pred.device))
            else:
                preds = logits.argmax(1)
                for _, metric in metrics:
                    metric.update(preds, masks)
            self._log_metrics(stage, on_step=False)
        if self.keep_example_outputs and batch_idx == 0:  # for the W&B panels: no second forward pass
            return {"loss": loss, "preds": logits.detach().argmax(1)}
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int):
        return self._eval_step(batch, "val", batch_idx)

    def test_step(self, batch: dict[str, Any], batch_idx: int):
        return self._eval_step(batch, "test", batch_idx)

    def predict_step(self, batch: dict[str, Any] | torch.Tensor, batch_idx: int = 0, dataloader_idx: int = 0):
        """A tensor batch -> ``[B,H,W]`` class ids; a datamodule batch -> one ``[h,w]`` map per image at its
        original size."""
        if isinstance(batch, torch.Tensor):
            return self.predict(batch)
        logits = self(batch["image"])
        if "orig_size" in batch:
            return self.logits_to_original(logits, batch.get("valid_size"), batch["orig_size"])
        return logits.argmax(1)


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _default_loss_spec(loss_type: str, ce_weight: float, dice_weight: float) -> dict[str, Any]:
    spec: dict[str, Any] = {"_target_": _path(LOSSES[loss_type])}
    if loss_type == "combined":
        spec.update(ce_weight=ce_weight, dice_weight=dice_weight)
    return spec


def _name_of(spec: dict[str, Any], registry: dict[str, type], default: str) -> str:
    for name, cls in registry.items():
        if spec["_target_"] in (_path(cls), f"autotimm.{cls.__name__}", f"autotimm.heads.{cls.__name__}",
                                f"autotimm.losses.{cls.__name__}"):
            return name
    return spec["_target_"].rpartition(".")[2] or default


def preferred_output_stride(head_spec: dict) -> int | None:
    """The backbone stride a head asks for (its class's ``preferred_output_stride``), used when the backbone's
    ``output_stride`` is ``"auto"``. None for heads that fuse every level at the native strides (FCN, UPerNet...)."""
    from hydra.utils import get_object

    try:
        target = get_object(head_spec["_target_"])
    except Exception:  # noqa: BLE001 - building the head reports an unknown target with its own error
        return None
    value = getattr(target, "preferred_output_stride", None)
    return int(value) if value else None
