"""Dense segmentation losses over logits ``[B,C,H,W]`` and targets ``[B,H,W]``.

Shared rules, all losses:
- pixels equal to ``ignore_index`` have exactly no effect (value and gradient);
- a batch whose pixels are all ignored gives a loss of 0 with finite (zero) gradients, never NaN;
- a label outside ``0..num_classes-1`` that is not ``ignore_index`` raises a ``ValueError`` listing the bad values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def valid_pixels(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Check shapes and labels; return (valid mask [B,H,W] bool, target with ignored pixels set to 0)."""
    if logits.dim() != 4 or target.dim() != 3 or logits.shape[0] != target.shape[0] \
            or logits.shape[-2:] != target.shape[-2:]:
        raise ValueError(f"expected logits [B,C,H,W] and target [B,H,W] of the same B,H,W; got logits "
                         f"{tuple(logits.shape)} and target {tuple(target.shape)}")
    num_classes = logits.shape[1]
    valid = target != ignore_index
    bad = valid & ((target < 0) | (target >= num_classes))
    if bool(bad.any()):
        values = torch.unique(target[bad]).tolist()
        raise ValueError(f"target contains labels {values[:20]} outside 0..{num_classes - 1} that are not "
                         f"ignore_index={ignore_index}; check num_classes or map those labels (class_mapping)")
    return valid, torch.where(valid, target, torch.zeros_like(target))


def _safe_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    return total / count.clamp(min=1).to(total.dtype)


def boundary_mask(target: torch.Tensor, valid: torch.Tensor, width: int) -> torch.Tensor:
    """Valid pixels [B,H,W] within ``width // 2`` pixels (a ``width`` x ``width`` window) of a valid pixel of
    another class: the maximum and minimum label over the window (ignored pixels take part in neither) differ from
    the pixel's own. Two pooling passes, no loop over classes."""
    t, v, off = target.float().unsqueeze(1), valid.unsqueeze(1), torch.tensor(float("-inf"), device=target.device)
    hi = F.max_pool2d(torch.where(v, t, off), width, 1, width // 2)
    lo = -F.max_pool2d(torch.where(v, -t, off), width, 1, width // 2)
    return valid & ((hi.squeeze(1) > t.squeeze(1)) | (lo.squeeze(1) < t.squeeze(1)))


class CrossEntropySegmentationLoss(nn.Module):
    """Pixel-wise cross-entropy averaged over non-ignored pixels (0 when there are none).

    ``class_weights`` (one per class) and ``boundary_weight`` weight the pixels, and the mean is then over the
    pixels' weights: a pixel within ``boundary_width // 2`` of another class's pixel (label boundaries, where thin
    objects are nothing but boundary) counts ``1 + boundary_weight`` times.
    """

    def __init__(self, num_classes: int | None = None, ignore_index: int = 255, label_smoothing: float = 0.0,
                 class_weights: list[float] | None = None, boundary_weight: float = 0.0, boundary_width: int = 3):
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        if class_weights is not None:
            if num_classes is not None and len(class_weights) != num_classes:
                raise ValueError(f"loss.class_weights: {len(class_weights)} weights for {num_classes} classes; "
                                 "expected one weight per class, in class-id order")
            if any(w < 0 for w in class_weights) or not any(w > 0 for w in class_weights):
                raise ValueError(f"loss.class_weights: {list(class_weights)}; expected weights >= 0, at least one > 0")
        if boundary_weight < 0:
            raise ValueError(f"loss.boundary_weight: {boundary_weight}; expected >= 0 (0: no boundary term)")
        if int(boundary_width) != boundary_width or boundary_width < 3 or boundary_width % 2 == 0:
            raise ValueError(f"loss.boundary_width: {boundary_width}; expected an odd integer >= 3 (the window, "
                             "in pixels, that finds a label boundary)")
        self.boundary_weight, self.boundary_width = float(boundary_weight), int(boundary_width)
        self.register_buffer("class_weights", torch.tensor(class_weights, dtype=torch.float32)
                             if class_weights is not None else None, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid, tgt = valid_pixels(logits, target, self.ignore_index)
        per_pixel = F.cross_entropy(logits.float(), tgt, weight=self.class_weights, reduction="none",
                                    label_smoothing=self.label_smoothing)
        weight = valid.float()
        if self.boundary_weight:
            weight = weight + self.boundary_weight * boundary_mask(tgt, valid, self.boundary_width)
        per_pixel = per_pixel * weight
        if self.class_weights is not None or self.boundary_weight:
            denom = weight * self.class_weights[tgt] if self.class_weights is not None else weight
            return per_pixel.sum() / denom.sum().clamp(min=1e-12) if bool(valid.any()) else per_pixel.sum()
        return _safe_mean(per_pixel.sum(), valid.sum())


class OhemCrossEntropyLoss(nn.Module):
    """Online hard example mining cross-entropy (mmseg's ``OHEMPixelSampler``, Wu et al. 2016 / PSPNet, BiSeNet):
    the mean cross-entropy over the hard pixels only, those whose probability of their true class is below
    ``max(thresh, p_k)``, where ``p_k`` is the ``min_kept``-th smallest such probability in the batch (so at least
    ``min_kept`` pixels train however easy the batch). Ignored pixels never count; the selection itself carries no
    gradient.
    """

    def __init__(self, num_classes: int | None = None, ignore_index: int = 255, thresh: float = 0.7,
                 min_kept: int = 100_000):
        super().__init__()
        if not 0.0 < float(thresh) <= 1.0:
            raise ValueError(f"OhemCrossEntropyLoss: thresh must be in (0, 1], got {thresh}")
        if int(min_kept) < 0:
            raise ValueError(f"OhemCrossEntropyLoss: min_kept must be >= 0, got {min_kept}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.thresh, self.min_kept = float(thresh), int(min_kept)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid, tgt = valid_pixels(logits, target, self.ignore_index)
        per_pixel = F.cross_entropy(logits.float(), tgt, reduction="none")
        with torch.no_grad():
            prob = torch.where(valid, torch.exp(-per_pixel), torch.full_like(per_pixel, 2.0))  # ignored sort last
            n_valid = int(valid.sum())
            threshold = self.thresh
            if n_valid > 0:
                k = min(self.min_kept, n_valid - 1)  # 0-based, as mmseg's sort_prob[min(min_kept, n - 1)]
                threshold = max(threshold, float(torch.kthvalue(prob.flatten(), k + 1).values))
            hard = valid & (prob < threshold)
        return _safe_mean((per_pixel * hard).sum(), hard.sum())


def _soft_counts(logits: torch.Tensor, target: torch.Tensor, ignore_index: int):
    """Per-class soft TP, FP, FN over the batch, ignored pixels excluded."""
    valid, tgt = valid_pixels(logits, target, ignore_index)
    probs = logits.float().softmax(dim=1)
    v = valid.unsqueeze(1).to(probs.dtype)
    onehot = F.one_hot(tgt, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype) * v
    probs = probs * v
    dims = (0, 2, 3)
    tp = (probs * onehot).sum(dims)
    fp = probs.sum(dims) - tp
    fn = onehot.sum(dims) - tp
    return tp, fp, fn


class DiceLoss(nn.Module):
    """Soft multi-class Dice: ``1 - mean_c (2*TP_c + s) / (2*TP_c + FP_c + FN_c + s)``.

    Computed over the whole batch per class, ``s`` = ``smooth``. A class absent from both prediction mass and
    target scores 1 (no penalty), so an all-ignored batch gives exactly 0.
    """

    def __init__(self, num_classes: int | None = None, ignore_index: int = 255, smooth: float = 1.0):
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        tp, fp, fn = _soft_counts(logits, target, self.ignore_index)
        dice = (2 * tp + self.smooth) / (2 * tp + fp + fn + self.smooth)
        return 1.0 - dice.mean()


class LovaszSoftmaxLoss(nn.Module):
    """Lovasz-softmax (Berman et al., CVPR 2018): the Lovasz extension of each class's Jaccard loss over the batch's
    pixels, averaged over the classes present in the target (the reference's ``classes='present'``,
    ``per_image=False``). Per class: the errors ``|fg - p_c|`` sorted descending, dotted with the Jaccard loss's
    increments along that order. A tighter surrogate of IoU than Dice; written here because torchvision has none
    and smp's loops over the classes: one sort of a ``[C, pixels]`` matrix does all of them.
    """

    def __init__(self, num_classes: int | None = None, ignore_index: int = 255):
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid, tgt = valid_pixels(logits, target, self.ignore_index)
        num_classes = logits.shape[1]
        probs = logits.float().softmax(dim=1).transpose(0, 1).reshape(num_classes, -1)  # [C, N]
        fg = F.one_hot(tgt.reshape(-1), num_classes).t().to(probs.dtype)                # [C, N]
        v = valid.reshape(1, -1)
        fg = fg * v
        errors = torch.where(v, (fg - probs).abs(), torch.full_like(probs, -1.0))     # ignored sort last
        errors_sorted, perm = torch.sort(errors, dim=1, descending=True)
        with torch.no_grad():
            fg_sorted = fg.gather(1, perm)
            gts = fg_sorted.sum(1, keepdim=True)
            intersection = gts - fg_sorted.cumsum(1)
            union = gts + (1.0 - fg_sorted).cumsum(1)
            jaccard = 1.0 - intersection / union.clamp(min=1e-12)
            grad = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)
        per_class = (errors_sorted.clamp(min=0) * grad).sum(1)
        present = gts.squeeze(1) > 0
        return _safe_mean((per_class * present).sum(), present.sum())


class TverskyLoss(nn.Module):
    """Tversky loss: ``1 - mean_c (TP + s) / (TP + alpha*FP + beta*FN + s)``. alpha=beta=0.5 is Dice.

    A higher ``beta`` penalises false negatives more (favours recall).
    """

    def __init__(self, num_classes: int | None = None, alpha: float = 0.5, beta: float = 0.5,
                 ignore_index: int = 255, smooth: float = 1.0):
        super().__init__()
        if alpha < 0 or beta < 0 or alpha + beta == 0:
            raise ValueError(f"TverskyLoss: alpha and beta must be >= 0 and not both 0, got {alpha}, {beta}")
        self.num_classes = num_classes
        self.alpha, self.beta = alpha, beta
        self.ignore_index = ignore_index
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        tp, fp, fn = _soft_counts(logits, target, self.ignore_index)
        ti = (tp + self.smooth) / (tp + self.alpha * fp + self.beta * fn + self.smooth)
        return 1.0 - ti.mean()


class FocalLossPixelwise(nn.Module):
    """Multi-class focal loss ``-alpha * (1 - p_t)^gamma * log p_t`` averaged over non-ignored pixels."""

    def __init__(self, num_classes: int | None = None, alpha: float = 1.0, gamma: float = 2.0,
                 ignore_index: int = 255):
        super().__init__()
        self.num_classes = num_classes
        self.alpha, self.gamma = alpha, gamma
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid, tgt = valid_pixels(logits, target, self.ignore_index)
        logp_t = F.log_softmax(logits.float(), dim=1).gather(1, tgt.unsqueeze(1)).squeeze(1)
        p_t = logp_t.exp()
        loss = -self.alpha * (1 - p_t).pow(self.gamma) * logp_t
        return _safe_mean((loss * valid).sum(), valid.sum())


class CombinedSegmentationLoss(nn.Module):
    """``ce_weight * CrossEntropy + dice_weight * Dice``; ``class_weights`` (one per class) and
    ``boundary_weight`` / ``boundary_width`` (pixels near a label boundary) weight the CE term
    (``CrossEntropySegmentationLoss``). ``ohem_thresh`` (with ``ohem_min_kept``) makes the CE term online hard
    example mining (``OhemCrossEntropyLoss``: the mean over the pixels whose true-class probability is below
    ``max(ohem_thresh, the ohem_min_kept-th smallest)``), as BiSeNet / STDC / DDRNet train; Dice stays over all
    pixels. It does not combine with ``class_weights`` or ``boundary_weight``. ``lovasz_weight`` adds that times
    ``LovaszSoftmaxLoss`` (``dice_weight=0 lovasz_weight=1``: CE + Lovasz-softmax)."""

    def __init__(self, num_classes: int | None = None, ce_weight: float = 1.0, dice_weight: float = 1.0,
                 ignore_index: int = 255, smooth: float = 1.0, class_weights: list[float] | None = None,
                 boundary_weight: float = 0.0, boundary_width: int = 3, ohem_thresh: float | None = None,
                 ohem_min_kept: int = 100_000, lovasz_weight: float = 0.0):
        super().__init__()
        if ce_weight < 0 or dice_weight < 0 or lovasz_weight < 0:
            raise ValueError(f"ce_weight, dice_weight and lovasz_weight must be >= 0, got {ce_weight}, {dice_weight}, "
                             f"{lovasz_weight}")
        if ce_weight == 0 and dice_weight == 0 and lovasz_weight == 0:
            raise ValueError("ce_weight and dice_weight are both 0 and lovasz_weight is 0: the loss would be "
                             "constant; set at least one > 0")
        self.num_classes = num_classes
        self.ce_weight, self.dice_weight, self.lovasz_weight = ce_weight, dice_weight, lovasz_weight
        self.ignore_index = ignore_index
        if ohem_thresh is not None:
            if class_weights is not None or boundary_weight:
                raise ValueError(f"loss.ohem_thresh={ohem_thresh} selects the CE term's pixels by difficulty; it does "
                                 "not combine with loss.class_weights or loss.boundary_weight (expected those "
                                 "null / 0, or ohem_thresh null)")
            self.ce = OhemCrossEntropyLoss(num_classes, ignore_index, thresh=ohem_thresh, min_kept=ohem_min_kept)
        else:
            self.ce = CrossEntropySegmentationLoss(num_classes, ignore_index, class_weights=class_weights,
                                                   boundary_weight=boundary_weight, boundary_width=boundary_width)
        self.dice = DiceLoss(num_classes, ignore_index, smooth)
        self.lovasz = LovaszSoftmaxLoss(num_classes, ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = logits.new_zeros((), dtype=torch.float32)
        if self.ce_weight:
            loss = loss + self.ce_weight * self.ce(logits, target)
        if self.dice_weight:
            loss = loss + self.dice_weight * self.dice(logits, target)
        if self.lovasz_weight:
            loss = loss + self.lovasz_weight * self.lovasz(logits, target)
        return loss
