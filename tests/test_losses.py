"""Losses against hand-computed values, ignore_index semantics, all-ignored batches and bad labels."""

import math

import pytest
import torch
import torch.nn.functional as F

from autotimm.losses import (
    CombinedSegmentationLoss,
    CrossEntropySegmentationLoss,
    DiceLoss,
    FocalLossPixelwise,
    LovaszSoftmaxLoss,
    OhemCrossEntropyLoss,
    TverskyLoss,
)


def two_pixels():
    # pixel 0: logits (0, 0) -> p = (0.5, 0.5); pixel 1: logits (ln 3, 0) -> p = (0.75, 0.25)
    logits = torch.tensor([[[[0.0, math.log(3.0)]], [[0.0, 0.0]]]])  # [1, 2, 1, 2]
    target = torch.tensor([[[0, 1]]])  # [1, 1, 2]
    return logits, target


# hand computation (see comments): CE = (ln2 + ln4) / 2
CE = (math.log(2) + math.log(4)) / 2
# Dice, smooth=1: class0 TP=.5 FP=.75 FN=.5 ; class1 TP=.25 FP=.5 FN=.75
DICE_S1 = 1 - ((2 * 0.5 + 1) / (2 * 0.5 + 0.75 + 0.5 + 1) + (2 * 0.25 + 1) / (2 * 0.25 + 0.5 + 0.75 + 1)) / 2
DICE_S0 = 1 - ((1.0 / 2.25) + (0.5 / 1.75)) / 2
TVERSKY = 1 - (0.5 / (0.5 + 0.3 * 0.75 + 0.7 * 0.5) + 0.25 / (0.25 + 0.3 * 0.5 + 0.7 * 0.75)) / 2
FOCAL = (0.5**2 * math.log(2) + 0.75**2 * math.log(4)) / 2
# Lovasz-softmax. Class 0: fg (1, 0), p0 (0.5, 0.75), errors (0.5, 0.75); sorted: pixel 1 (fg 0), pixel 0 (fg 1);
# Jaccard loss along the order: 1 - 1/2 = 0.5, then 1 - 0/2 = 1 -> increments (0.5, 0.5): 0.75 * 0.5 + 0.5 * 0.5.
# Class 1: fg (0, 1), p1 (0.5, 0.25), errors (0.5, 0.75); sorted: pixel 1 (fg 1), pixel 0 (fg 0); Jaccard loss 1 - 0/1
# = 1, then 1 - 0/2 = 1 -> increments (1, 0): 0.75. Mean over the two present classes.
LOVASZ = (0.75 * 0.5 + 0.5 * 0.5 + 0.75) / 2


@pytest.mark.parametrize("loss, expected", [
    (CrossEntropySegmentationLoss(2), CE),
    (DiceLoss(2, smooth=1.0), DICE_S1),
    (DiceLoss(2, smooth=0.0), DICE_S0),
    (TverskyLoss(2, alpha=0.3, beta=0.7, smooth=0.0), TVERSKY),
    (TverskyLoss(2, alpha=0.5, beta=0.5, smooth=0.0), DICE_S0),
    (FocalLossPixelwise(2, gamma=2.0), FOCAL),
    (CombinedSegmentationLoss(2, ce_weight=1.0, dice_weight=1.0), CE + DICE_S1),
    (CombinedSegmentationLoss(2, ce_weight=0.5, dice_weight=2.0), 0.5 * CE + 2.0 * DICE_S1),
    # OHEM: true-class probabilities 0.5 (pixel 0) and 0.25 (pixel 1)
    (OhemCrossEntropyLoss(2, thresh=0.7, min_kept=0), CE),            # both below 0.7
    (OhemCrossEntropyLoss(2, thresh=0.3, min_kept=0), math.log(4)),   # only pixel 1 is hard
    (OhemCrossEntropyLoss(2, thresh=0.3, min_kept=1), math.log(4)),   # 2nd smallest p = 0.5: threshold 0.5, p < 0.5
    (OhemCrossEntropyLoss(2, thresh=0.3, min_kept=5), math.log(4)),   # capped at the valid count, as mmseg
    (OhemCrossEntropyLoss(2, thresh=0.2, min_kept=0), 0.0),           # nothing hard: 0
    (LovaszSoftmaxLoss(2), LOVASZ),
    (CombinedSegmentationLoss(2, dice_weight=0.0, lovasz_weight=1.0), CE + LOVASZ),
    (CombinedSegmentationLoss(2, dice_weight=1.0, lovasz_weight=0.5), CE + DICE_S1 + 0.5 * LOVASZ),
    # OHEM as the combined loss's CE term: Dice stays over both pixels
    (CombinedSegmentationLoss(2, ohem_thresh=0.3, ohem_min_kept=0), math.log(4) + DICE_S1),
    (CombinedSegmentationLoss(2, ohem_thresh=0.7, ohem_min_kept=0, dice_weight=0.5), CE + 0.5 * DICE_S1),
])
def test_hand_computed_values(loss, expected):
    logits, target = two_pixels()
    assert loss(logits, target).item() == pytest.approx(expected, abs=1e-6)


LOSSES = [CrossEntropySegmentationLoss(2), DiceLoss(2), TverskyLoss(2, alpha=0.3, beta=0.7),
          FocalLossPixelwise(2), CombinedSegmentationLoss(2), OhemCrossEntropyLoss(2, thresh=0.9, min_kept=1),
          CombinedSegmentationLoss(2, ohem_thresh=0.9, ohem_min_kept=1), LovaszSoftmaxLoss(2),
          CombinedSegmentationLoss(2, dice_weight=0.0, lovasz_weight=1.0)]


@pytest.mark.parametrize("loss", LOSSES, ids=lambda m: type(m).__name__)
def test_ignored_pixels_have_no_effect(loss):
    logits, target = two_pixels()
    target = target.clone()
    target[0, 0, 1] = 255
    x = logits.clone().requires_grad_(True)
    value = loss(x, target)
    value.backward()
    # same value as a batch holding only the non-ignored pixel
    alone = loss(logits[..., :1], target[..., :1])
    assert value.item() == pytest.approx(alone.item(), abs=1e-6)
    # and exactly zero gradient on the ignored pixel's logits, whatever they are
    assert torch.all(x.grad[..., 1] == 0)
    x2 = logits.clone()
    x2[..., 1] = torch.tensor([[50.0], [-50.0]])
    assert loss(x2, target).item() == pytest.approx(value.item(), abs=1e-6)


@pytest.mark.parametrize("loss", LOSSES, ids=lambda m: type(m).__name__)
def test_all_ignored_batch_gives_zero_and_finite_grads(loss):
    x = torch.randn(2, 2, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), 255)
    value = loss(x, target)
    value.backward()
    assert value.item() == 0.0
    assert torch.isfinite(x.grad).all() and torch.all(x.grad == 0)


@pytest.mark.parametrize("loss", LOSSES, ids=lambda m: type(m).__name__)
def test_label_out_of_range_raises(loss):
    logits, _ = two_pixels()
    with pytest.raises(ValueError, match=r"labels \[7\] outside 0\.\.1.*ignore_index=255"):
        loss(logits, torch.tensor([[[0, 7]]]))


def test_lovasz_matches_the_reference_loop_over_classes():
    """Against the reference algorithm (Berman et al.'s lovasz_softmax_flat, one class at a time, 'present' classes)
    on a random batch with ignored pixels and an absent class; and a perfect prediction scores 0."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=g)
    target = torch.randint(0, 3, (2, 5, 6), generator=g)   # class 3 absent
    target[0, 0, :4] = 255
    probs = logits.softmax(1).permute(0, 2, 3, 1).reshape(-1, 4)
    labels = target.reshape(-1)
    keep = labels != 255
    probs, labels = probs[keep], labels[keep]
    losses = []
    for c in range(4):
        fg = (labels == c).float()
        if fg.sum() == 0:
            continue
        errors, perm = torch.sort((fg - probs[:, c]).abs(), descending=True)
        fgs = fg[perm]
        jac = 1 - (fgs.sum() - fgs.cumsum(0)) / (fgs.sum() + (1 - fgs).cumsum(0))
        jac[1:] = jac[1:] - jac[:-1].clone()
        losses.append(torch.dot(errors, jac))
    expected = torch.stack(losses).mean().item()
    assert LovaszSoftmaxLoss(4)(logits, target).item() == pytest.approx(expected, abs=1e-6)
    perfect = F.one_hot(target.clamp(max=3), 4).permute(0, 3, 1, 2).float() * 100
    assert LovaszSoftmaxLoss(4)(perfect, target).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("kwargs", [{"class_weights": [1.0, 2.0]}, {"boundary_weight": 1.0}])
def test_combined_ohem_rejects_pixel_weights(kwargs):
    with pytest.raises(ValueError, match=r"loss\.ohem_thresh=0\.7 .*class_weights or loss\.boundary_weight"):
        CombinedSegmentationLoss(2, ohem_thresh=0.7, **kwargs)


def test_combined_weights_both_zero_rejected():
    with pytest.raises(ValueError, match="both 0"):
        CombinedSegmentationLoss(3, ce_weight=0.0, dice_weight=0.0)


def test_custom_ignore_index():
    logits, target = two_pixels()
    t = target.clone()
    t[0, 0, 1] = -1
    assert CrossEntropySegmentationLoss(2, ignore_index=-1)(logits, t).item() == pytest.approx(math.log(2), abs=1e-6)


def test_combined_class_weights_weight_the_ce_term():
    """Two pixels: target 0 with logits (0, 0) -> CE ln 2; target 1 with logits (0, ln 3) -> CE ln(4/3). Weights
    (1, 3): the weighted mean (1 ln 2 + 3 ln(4/3)) / 4; Dice is unweighted and added as before."""
    logits = torch.tensor([[[[0.0, 0.0]], [[0.0, math.log(3.0)]]]])  # [1, 2, 1, 2]
    target = torch.tensor([[[0, 1]]])
    expected_ce = (math.log(2.0) + 3 * math.log(4 / 3)) / 4
    ce_only = CombinedSegmentationLoss(num_classes=2, dice_weight=0.0, class_weights=[1.0, 3.0])
    assert ce_only(logits, target).item() == pytest.approx(expected_ce, rel=1e-6)
    both = CombinedSegmentationLoss(num_classes=2, class_weights=[1.0, 3.0])
    dice = DiceLoss(num_classes=2)(logits, target).item()
    assert both(logits, target).item() == pytest.approx(expected_ce + dice, rel=1e-6)
    unweighted = CombinedSegmentationLoss(num_classes=2, dice_weight=0.0)
    assert unweighted(logits, target).item() == pytest.approx((math.log(2.0) + math.log(4 / 3)) / 2, rel=1e-6)


def _row(labels):
    """A 1x4 row, two classes, logits (ln 3, 0) everywhere: CE ln(4/3) on a class-0 pixel, ln 4 on a class-1 one."""
    logits = torch.zeros(1, 2, 1, 4)
    logits[:, 0] = math.log(3.0)
    return logits, torch.tensor([[labels]])


def test_boundary_mask_exact_pixels():
    from autotimm.losses.segmentation import boundary_mask

    t = torch.tensor([[[0, 0, 0, 1, 1, 1, 1]]])
    valid = torch.ones_like(t, dtype=torch.bool)
    assert boundary_mask(t, valid, 3).int().tolist() == [[[0, 0, 1, 1, 0, 0, 0]]]
    assert boundary_mask(t, valid, 5).int().tolist() == [[[0, 1, 1, 1, 1, 0, 0]]]
    # an ignored neighbour is no boundary, and an ignored pixel never is one
    t2 = torch.tensor([[[0, 0, 9, 1, 1]]])
    valid2 = t2 != 9
    assert boundary_mask(t2.clamp(max=1), valid2, 3).int().tolist() == [[[0, 0, 0, 0, 0]]]
    # 2-d: a one-pixel-wide vertical line (a pole) is boundary, and so are its neighbours on both sides
    img = torch.zeros(1, 3, 5, dtype=torch.long)
    img[0, :, 2] = 1
    assert boundary_mask(img, torch.ones_like(img, dtype=torch.bool), 3)[0].int().tolist() == [[0, 1, 1, 1, 0]] * 3


def test_boundary_weight_weights_the_ce_term():
    """Labels (0, 0, 0, 1), window 3: pixels 2 and 3 are on the boundary and count 1 + 1 = 2 times:
    (ln(4/3) + ln(4/3) + 2 ln(4/3) + 2 ln 4) / 6."""
    logits, target = _row([0, 0, 0, 1])
    loss = CrossEntropySegmentationLoss(2, boundary_weight=1.0)(logits, target).item()
    assert loss == pytest.approx((4 * math.log(4 / 3) + 2 * math.log(4.0)) / 6, rel=1e-6)
    plain = CrossEntropySegmentationLoss(2)(logits, target).item()
    assert plain == pytest.approx((3 * math.log(4 / 3) + math.log(4.0)) / 4, rel=1e-6)
    # with class weights (1, 3) too: pixel weights 1, 1, 2, 6
    both = CombinedSegmentationLoss(2, dice_weight=0.0, class_weights=[1.0, 3.0], boundary_weight=1.0)
    expected = (math.log(4 / 3) * (1 + 1 + 2) + math.log(4.0) * 6) / 10
    assert both(logits, target).item() == pytest.approx(expected, rel=1e-6)
    # an ignored pixel between the classes: no boundary left, the plain mean over the three valid pixels
    logits, target = _row([0, 0, 255, 1])
    loss = CrossEntropySegmentationLoss(2, boundary_weight=4.0)(logits, target).item()
    assert loss == pytest.approx((2 * math.log(4 / 3) + math.log(4.0)) / 3, rel=1e-6)
    # all ignored: 0, finite gradient
    logits = logits.clone().requires_grad_(True)
    out = CrossEntropySegmentationLoss(2, boundary_weight=1.0)(logits, torch.full((1, 1, 4), 255))
    out.backward()
    assert out.item() == 0.0 and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("kwargs,field", [({"boundary_weight": -1.0}, "loss.boundary_weight"),
                                          ({"boundary_width": 4}, "loss.boundary_width"),
                                          ({"boundary_width": 1}, "loss.boundary_width")])
def test_boundary_bad_input_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        CombinedSegmentationLoss(num_classes=2, **kwargs)


@pytest.mark.parametrize("weights", [[1.0, 2.0, 3.0], [1.0, -1.0], [0.0, 0.0]])
def test_class_weights_bad_input_names_the_field(weights):
    with pytest.raises(ValueError, match="loss.class_weights"):
        CombinedSegmentationLoss(num_classes=2, class_weights=weights)
