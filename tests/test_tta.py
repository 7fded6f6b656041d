"""Test-time augmentation (autotimm.tta): one implementation for predict.py, eval.py and the validation loop."""

import pytest
import torch

from autotimm import FeatureBackboneConfig, SemanticSegmentor
from autotimm.tta import TTA, tta_logits


def per_pixel_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1)).eval()


@pytest.mark.parametrize("scales", [[1.0], [0.5, 1.0, 1.5]])
@pytest.mark.parametrize("crop, stride", [(32, 21), (16, 16), (48, 8)])
def test_whole_and_slide_agree_for_a_per_pixel_model(scales, crop, stride):
    """Windows change nothing for a model that sees one pixel at a time: whole and slide give the same logits (and
    classes) at every scale, on a padded input with a valid region and an output at another (original) size."""
    model = per_pixel_model()
    x = torch.randn(1, 3, 64, 64)
    kw = dict(valid_size=(40, 64), out_size=(50, 80))
    whole = tta_logits(model, x, TTA(scales=scales), 8, **kw)
    slide = tta_logits(model, x, TTA(scales=scales, mode="slide", crop_size=crop, stride=stride), 8, **kw)
    assert whole.shape == (1, 4, 50, 80)
    assert torch.allclose(whole, slide, atol=1e-5)
    assert torch.equal(whole.argmax(1), slide.argmax(1))


def test_flip_of_a_symmetric_input_is_exactly_symmetric():
    """With flip, a left-right symmetric input gives exactly symmetric logits, whatever the (asymmetric) network;
    without flip it does not."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 3, (1, 5), padding=(0, 2))).eval()
    half = torch.randn(1, 3, 32, 16)
    x = torch.cat([half, half.flip(-1)], -1)  # symmetric, 32 x 32 (a multiple of 8: no padding)
    plain = tta_logits(net, x, TTA(), 8)
    flipped = tta_logits(net, x, TTA(flip=True), 8)
    assert not torch.equal(plain, plain.flip(-1))
    assert torch.equal(flipped, flipped.flip(-1))
    assert torch.allclose(flipped, 0.5 * (plain + plain.flip(-1)), atol=1e-6)


def test_identity_tta_is_the_plain_forward_and_bad_settings_are_named():
    model = per_pixel_model()
    x = torch.randn(1, 3, 32, 32)
    assert TTA().identity and not TTA(flip=True).identity
    assert torch.equal(tta_logits(model, x, TTA(), 8), model(x))
    with pytest.raises(ValueError, match="tta.mode=slide needs tta.crop_size"):
        TTA(mode="slide")
    with pytest.raises(ValueError, match="tta.mode must be one of"):
        TTA(mode="tiles")
    with pytest.raises(ValueError, match="tta.scales must be a non-empty list of positive factors"):
        TTA(scales=[0.0])
    with pytest.raises(ValueError, match=r"tta.stride must be in \[1, crop_size=16\]"):
        TTA(mode="slide", crop_size=16, stride=32)


def test_validation_scores_with_tta_when_asked():
    """tta_stages=["val"]: the validation metrics come from the TTA-averaged logits at the original resolution;
    identity TTA (or a stage not listed) is the plain path."""
    torch.manual_seed(0)
    model = SemanticSegmentor(FeatureBackboneConfig("test_resnet", pretrained=False), num_classes=3,
                              per_class_metrics=False,
                              metrics=[{"name": "acc", "metric_class": "Accuracy", "stages": ["val", "test"],
                                        "params": {"task": "multiclass", "average": "micro"}}]).eval()
    images = torch.randn(2, 3, 32, 32)
    batch = {"image": images, "mask": torch.zeros(2, 32, 32, dtype=torch.long),
             "valid_size": torch.tensor([[32, 24], [16, 32]]), "orig_size": torch.tensor([[40, 30], [20, 40]]),
             "orig_mask": [torch.randint(0, 3, (40, 30)), torch.randint(0, 3, (20, 40))]}
    tta = TTA(scales=[0.75, 1.0], flip=True)
    want = [tta_logits(model.model, images[i:i + 1], tta, 32, valid_size=batch["valid_size"][i].tolist(),
                       out_size=batch["orig_mask"][i].shape).argmax(1)[0] for i in range(2)]
    model.set_tta({"scales": [0.75, 1.0], "flip": True}, ["val"])
    assert [p.shape for p in model._tta_preds(model._tta_for("val"), batch)] == [(40, 30), (20, 40)]
    assert all(torch.equal(a, b) for a, b in zip(model._tta_preds(model._tta_for("val"), batch), want))
    assert model._tta_for("test") is None
    logged = {}
    model.log = lambda name, value, **k: logged.__setitem__(name, value)
    with torch.no_grad():
        model._eval_step(batch, "val")
    correct = sum(int((p == t).sum()) for p, t in zip(want, batch["orig_mask"]))
    assert float(logged["val/acc"].compute()) == pytest.approx(correct / (40 * 30 + 20 * 40))
    with pytest.raises(ValueError, match="tta_stages: expected 'val' and/or 'test'"):
        model.set_tta(tta, ["train"])
