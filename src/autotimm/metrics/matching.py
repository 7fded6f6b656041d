"""The 2018 Data Science Bowl's score for instance segmentation, as a torchmetrics ``Metric``.

At each IoU threshold t in 0.5, 0.55, ..., 0.95: one-to-one matches at IoU > t, TP / (TP + FP + FN) per image;
``dsb_score`` is the mean over thresholds, then over images (the challenge's "mean average precision"), and
``match_acc_50`` the same at t = 0.5 alone. ``match_tp_50`` / ``match_fp_50`` / ``match_fn_50`` are the totals at
0.5 over the dataset. Detections count from ``score_thresh`` up (0.5, ``predict.py``'s default: what a user's
segmentation would hold; ``autotimm.training.ScoreThresholdCalibration`` chooses it on training images instead; it is
logged as ``<stage>/score_thresh``), crowd regions are left out. Mask IoUs come from pycocotools (``mask.iou`` on
RLEs), all pairs of an image at once.

Matching: at t >= 0.5 a detection can match at most one of several ground-truth instances that do not overlap (more
than half of it would have to lie in each), so the one-to-one matching is the set of ground-truth instances that
some detection matches: TP = their number, FP = detections - TP, FN = instances - TP (a second detection of the same
nucleus is an FP). Exact when ground-truth instances do not overlap (DSB2018, instance-id maps); otherwise TP is
capped at the number of matched detections.
"""

from __future__ import annotations

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torchmetrics import Metric

THRESHOLDS = np.linspace(0.5, 0.95, 10)
SCORE_GRID = np.round(np.arange(0.05, 0.96, 0.05), 2)  # the score thresholds a calibration chooses from


def mask_ious(dt_masks: torch.Tensor, gt_masks: torch.Tensor) -> np.ndarray:
    """IoU [D, G] of binary masks [D,H,W] and [G,H,W] (pycocotools on their RLEs)."""
    d, g = len(dt_masks), len(gt_masks)
    if d == 0 or g == 0:
        return np.zeros((d, g))

    def rle(m):
        return mask_utils.encode(np.asfortranarray(m.to(torch.uint8).cpu().numpy().transpose(1, 2, 0)))

    return np.asarray(mask_utils.iou(rle(dt_masks), rle(gt_masks), [0] * g)).reshape(d, g)


def match_counts(iou: np.ndarray, thresholds: np.ndarray = THRESHOLDS) -> np.ndarray:
    """TP, FP, FN [T, 3] of one image from its IoU matrix [D, G] (see the module docstring)."""
    d, g = iou.shape
    hits = iou[:, :, None] > thresholds[None, None]  # [D, G, T]
    tp = np.minimum(hits.any(0).sum(0), hits.any(1).sum(0))
    return np.stack([tp, d - tp, g - tp], 1)


def match_counts_by_score(iou: np.ndarray, scores: np.ndarray, score_grid: np.ndarray = SCORE_GRID,
                          thresholds: np.ndarray = THRESHOLDS) -> np.ndarray:
    """TP, FP, FN [S, T, 3] of one image at every score threshold s of ``score_grid`` (the detections scoring >= s),
    from its IoU matrix [D, G] and the detections' scores [D]: ``match_counts`` of each subset, in one array
    operation ([S, D, G, T] booleans)."""
    g = iou.shape[1]
    scores = np.asarray(scores)
    # compared in the scores' precision, as MatchingAccuracy compares a float32 tensor with its threshold
    keep = scores[None, :] >= np.asarray(score_grid).astype(scores.dtype)[:, None]  # [S, D]
    hits = keep[:, :, None, None] & (iou[:, :, None] > thresholds[None, None])[None]  # [S, D, G, T]
    tp = np.minimum(hits.any(1).sum(1), hits.any(2).sum(1))  # [S, T]
    n = np.broadcast_to(keep.sum(1)[:, None], tp.shape)
    return np.stack([tp, n - tp, g - tp], -1)


def accuracy(counts: np.ndarray) -> np.ndarray:
    """TP / (TP + FP + FN) per threshold; 1 where there is nothing to find and nothing was found."""
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    denom = tp + fp + fn
    return np.where(denom > 0, tp / np.maximum(denom, 1), 1.0)


class MatchingAccuracy(Metric):
    """``update(preds, targets)`` with the ``MeanAveragePrecision`` inputs (per image: ``masks``, ``scores``;
    ``masks`` and optional ``iscrowd`` of the targets); ``compute()`` -> ``dsb_score``, ``match_acc_50``, the TP /
    FP / FN totals at 0.5 and the ``score_thresh`` they were counted at, logged under these names (``flat_keys``)."""

    full_state_update = False
    higher_is_better = True
    flat_keys = True  # InstanceSegmentor logs <stage>/<key>, not <stage>/<metric name>_<key>

    def __init__(self, score_thresh: float = 0.5, thresholds: list[float] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.score_thresh = float(score_thresh)
        self.thresholds = np.asarray(thresholds if thresholds is not None else THRESHOLDS, np.float64)
        if not len(self.thresholds) or self.thresholds[0] != 0.5:
            raise ValueError(f"thresholds must start at 0.5 (match_acc_50), got {self.thresholds.tolist()}")
        self.add_state("image_acc", default=[], dist_reduce_fx="cat")  # [T] per image
        self.add_state("totals", default=torch.zeros(3, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: list[dict], targets: list[dict]) -> None:
        for p, t in zip(preds, targets):  # a loop over images; all pairs of an image in one IoU call
            dt = p["masks"][p["scores"] >= self.score_thresh]
            crowd = t.get("iscrowd")
            gt = t["masks"][~crowd.bool()] if crowd is not None and len(crowd) else t["masks"]
            counts = match_counts(mask_ious(dt, gt), self.thresholds)
            self.image_acc.append(torch.as_tensor(accuracy(counts), dtype=torch.float64))
            self.totals += torch.as_tensor(counts[0], dtype=torch.float64)

    def compute(self) -> dict[str, torch.Tensor]:
        acc = self.image_acc
        acc = torch.stack(acc) if isinstance(acc, list) and acc else acc
        if isinstance(acc, list) or acc.numel() == 0:
            acc = torch.zeros(0, len(self.thresholds), dtype=torch.float64)
        acc = acc.reshape(-1, len(self.thresholds))
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        return {"dsb_score": acc.mean(1).mean() if len(acc) else nan,
                "match_acc_50": acc[:, 0].mean() if len(acc) else nan,
                "match_tp_50": self.totals[0], "match_fp_50": self.totals[1], "match_fn_50": self.totals[2],
                "score_thresh": torch.tensor(self.score_thresh, dtype=torch.float64)}
