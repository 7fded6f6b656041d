"""W&B image panels: a few validation images per epoch with prediction and ground-truth overlays.

Semantic: ``wandb.Image`` mask overlays (prediction, ground truth) with class names. Instance: predicted boxes with
class and score, and prediction / ground-truth instance masks as overlays. Does nothing without a ``WandbLogger``.
"""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch

from ..data.transforms import DEFAULT_PREPROCESS


def to_uint8(images: torch.Tensor, preprocess: dict | None = None) -> np.ndarray:
    """Normalised [B,3,H,W] -> uint8 [B,H,W,3], undoing the model's mean/std."""
    pre = preprocess or DEFAULT_PREPROCESS
    mean = torch.tensor(pre["mean"], device=images.device)[:, None, None]
    std = torch.tensor(pre["std"], device=images.device)[:, None, None]
    x = (images.float() * std + mean).clamp(0, 1) * 255
    return x.permute(0, 2, 3, 1).round().to(torch.uint8).cpu().numpy()


def instance_label_map(masks: torch.Tensor, labels: torch.Tensor, shape) -> np.ndarray:
    """Instance masks [N,H,W] -> one map of class ids + 1 (0 = background); later instances on top."""
    if len(masks) == 0:
        return np.zeros(shape, np.uint8)
    ids = masks.bool().to(torch.long) * (labels.to(masks.device) + 1)[:, None, None]
    return ids.max(0).values.cpu().numpy().astype(np.uint8)


class WandbImagePanels(pl.Callback):
    """Logs ``num_images`` validation images (from the first validation batch) each validation epoch under
    ``val/examples``. The predictions are the ones the validation step computed (the task returns them for batch 0
    while this callback is attached): no second forward pass."""

    def __init__(self, num_images: int = 4):
        self.num_images = num_images

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self._wandb_logger(trainer) is not None:
            pl_module.keep_example_outputs = True

    @staticmethod
    def _wandb_logger(trainer):
        from pytorch_lightning.loggers import WandbLogger

        return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)

    def _class_labels(self, trainer, pl_module, instance: bool) -> dict[int, str]:
        names = getattr(pl_module, "class_names", None) or getattr(getattr(trainer, "datamodule", None),
                                                                   "class_names", None)
        n = pl_module.num_classes
        names = list(names) if names and len(names) == n else [f"class_{i}" for i in range(n)]
        if instance:
            return {0: "background", **{i + 1: name for i, name in enumerate(names)}}
        return {**dict(enumerate(names)), 255: "ignore"}

    @torch.no_grad()
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx != 0 or trainer.sanity_checking or not trainer.is_global_zero or not isinstance(outputs, dict):
            return
        logger = self._wandb_logger(trainer)
        if logger is None:
            return
        import wandb

        k = min(self.num_images, batch["image"].shape[0])
        images = batch["image"][:k]
        pixels = to_uint8(images, getattr(pl_module, "preprocess", None))
        instance = pl_module.task_kind == "instance"
        labels = self._class_labels(trainer, pl_module, instance)
        panels = []
        if instance:
            preds = outputs["detections"]
            for i in range(k):
                p, t = preds[i], batch["targets"][i]
                shape = pixels[i].shape[:2]
                boxes = [{"position": {"minX": float(b[0]), "minY": float(b[1]), "maxX": float(b[2]),
                                       "maxY": float(b[3])}, "domain": "pixel", "class_id": int(c) + 1,
                          "box_caption": f"{labels[int(c) + 1]} {float(s):.2f}", "scores": {"score": float(s)}}
                         for b, c, s in zip(p["boxes"].tolist(), p["labels"].tolist(), p["scores"].tolist())]
                panels.append(wandb.Image(pixels[i], boxes={"predictions": {"box_data": boxes,
                                                                            "class_labels": labels}},
                                          masks={"predictions": {"mask_data": instance_label_map(
                                                     p["masks"], p["labels"], shape), "class_labels": labels},
                                                 "ground_truth": {"mask_data": instance_label_map(
                                                     t["masks"], t["labels"], shape), "class_labels": labels}}))
        else:
            preds = outputs["preds"][:k].cpu().numpy().astype(np.uint8)
            gts = batch["mask"][:k].cpu().numpy().astype(np.uint8)
            for i in range(k):
                panels.append(wandb.Image(pixels[i], masks={
                    "predictions": {"mask_data": preds[i], "class_labels": labels},
                    "ground_truth": {"mask_data": gts[i], "class_labels": labels}}))
        logger.experiment.log({"val/examples": panels, "trainer/global_step": trainer.global_step})
