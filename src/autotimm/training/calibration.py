"""Choosing the score threshold of the challenge-style instance metrics on training images.

``MatchingAccuracy`` (DSB2018's ``dsb_score`` and ``match_acc_50``) scores the detections above one score threshold:
the segmentation a user would keep. A fixed 0.5 is a guess that depends on how confident the model happens to be; a
threshold chosen on the validation images would be tuned on what is reported. ``ScoreThresholdCalibration`` chooses
it on training images instead (evaluated whole, as validation sees its images), just before each validation or test
pass, and sets it on the task's ``MatchingAccuracy`` metrics, so ``<stage>/dsb_score`` is the score at a threshold
the model picked without seeing the split it is scored on. The choice is logged, and the checkpoint keeps it
(``checkpoint["autotimm"]["score_thresh"]``), so ``eval.py`` on that checkpoint scores at the same threshold.
"""

from __future__ import annotations

import logging

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Subset

from ..metrics.matching import SCORE_GRID, THRESHOLDS, accuracy, mask_ious, match_counts_by_score

log = logging.getLogger("autotimm")

OBJECTIVES = ("dsb_score", "match_acc_50")


def choose_score_thresh(counts: np.ndarray, score_grid: np.ndarray, objective: str = "dsb_score"
                        ) -> tuple[float, np.ndarray]:
    """From per-image TP / FP / FN counts [N, S, T, 3] (``match_counts_by_score`` of N images), the score threshold of
    ``score_grid`` [S] with the best ``objective`` averaged over the images (the lowest threshold among equals), and
    that objective at every threshold [S]. ``dsb_score``: the mean over the IoU thresholds T; ``match_acc_50``: the
    first (0.5)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    acc = accuracy(counts)  # [N, S, T]
    per_thresh = (acc.mean(2) if objective == "dsb_score" else acc[..., 0]).mean(0)  # [S]
    best = int(np.argmax(per_thresh))
    return float(score_grid[best]), per_thresh


class ScoreThresholdCalibration(pl.Callback):
    """Before each validation / test pass, set the score threshold of the task's ``MatchingAccuracy`` metrics to the
    one of ``grid`` (0.05, 0.10, ..., 0.95) that maximises ``objective`` (``dsb_score`` or ``match_acc_50``) on
    ``images`` training images spread evenly over the ``split`` (the data module's training split by default),
    evaluated whole with the validation transform. Costs ``images`` predictions per pass."""

    def __init__(self, images: int = 32, objective: str = "dsb_score", grid: list[float] | None = None,
                 split: str | None = None):
        if objective not in OBJECTIVES:
            raise ValueError(f"ScoreThresholdCalibration.objective must be one of {OBJECTIVES}, got {objective!r}")
        if int(images) < 1:
            raise ValueError(f"ScoreThresholdCalibration.images must be >= 1, got {images!r}")
        self.images, self.objective, self.split = int(images), objective, split
        self.grid = np.asarray(grid if grid is not None else SCORE_GRID, np.float64)
        if self.grid.ndim != 1 or not len(self.grid) or (np.diff(self.grid) <= 0).any() or \
                (self.grid < 0).any() or (self.grid > 1).any():
            raise ValueError(f"ScoreThresholdCalibration.grid must be increasing scores in [0, 1], got {grid!r}")
        self.score_thresh: float | None = None
        self.table: np.ndarray | None = None  # the objective at each grid threshold, on the calibration images

    # Lightning hooks ---------------------------------------------------------------------------------------------
    def on_validation_start(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.calibrate(pl_module, trainer.datamodule)

    def on_test_start(self, trainer, pl_module):
        self.calibrate(pl_module, trainer.datamodule)

    # the work ------------------------------------------------------------------------------------------------------
    def calibration_set(self, datamodule):
        split = self.split or getattr(datamodule, "train_split", "train")
        if not hasattr(datamodule, "eval_dataset"):
            raise TypeError(f"ScoreThresholdCalibration needs an instance data module with eval_dataset(split), got "
                            f"{type(datamodule).__name__}")
        ds = datamodule.eval_dataset(split)
        n = min(self.images, len(ds))
        if n == 0:
            raise ValueError(f"ScoreThresholdCalibration: split {split!r} has no images")
        index = np.unique(np.linspace(0, len(ds) - 1, n).round().astype(int)).tolist()
        return split, Subset(ds, index)

    @torch.no_grad()
    def counts(self, pl_module, datamodule) -> tuple[str, np.ndarray]:
        """Per-image TP / FP / FN [N, S, T, 3] of the model's detections on the calibration images."""
        from ..data.instance import collate_instance

        split, subset = self.calibration_set(datamodule)
        loader = DataLoader(subset, batch_size=getattr(datamodule, "batch_size", 1), shuffle=False, num_workers=0,
                            collate_fn=collate_instance)
        was_training = pl_module.training
        pl_module.eval()
        out = []
        try:
            for batch in loader:
                preds = pl_module.model.predict(batch["image"].to(pl_module.device), batch["orig_size"],
                                                batch["valid_size"])
                for p, t in zip(preds, batch["orig_targets"]):
                    gt = t["masks"][~t["iscrowd"].bool()] if len(t["iscrowd"]) else t["masks"]
                    iou = mask_ious(p["masks"].bool(), gt.bool())
                    out.append(match_counts_by_score(iou, p["scores"].float().cpu().numpy(), self.grid, THRESHOLDS))
        finally:
            pl_module.train(was_training)
        return split, np.stack(out)

    def calibrate(self, pl_module, datamodule) -> float:
        split, counts = self.counts(pl_module, datamodule)
        self.score_thresh, self.table = choose_score_thresh(counts, self.grid, self.objective)
        set_score_thresh(pl_module, self.score_thresh)
        near = np.abs(self.grid - 0.5).argmin()
        log.info("score threshold: %.2f, chosen on %d %s images for %s (%.3f there; %.3f at %.2f)", self.score_thresh,
                 len(counts), split, self.objective, self.table.max(), self.table[near], self.grid[near])
        return self.score_thresh


def set_score_thresh(task, score_thresh: float) -> int:
    """Set ``score_thresh`` on every metric of the task that counts detections from one (``MatchingAccuracy``, or a
    user's metric with a ``score_thresh`` attribute), all stages, and record it on the task (its checkpoints keep
    it); returns how many metrics were set."""
    manager = getattr(task, "metric_manager", None)
    metrics = [m for m in manager.metrics.values() if hasattr(m, "score_thresh")] if manager is not None else []
    for m in metrics:
        m.score_thresh = float(score_thresh)
    task.calibrated_score_thresh = float(score_thresh)
    return len(metrics)
