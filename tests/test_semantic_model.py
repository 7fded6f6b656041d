"""SemanticSegmentor: shapes and resolutions, every timm test model, heads, optimizers, checkpoints, metrics."""

import re

import pytest
import pytorch_lightning as pl
import timm
import torch

from autotimm import FeatureBackboneConfig, LoggingConfig, MetricConfig, SemanticSegmentor
from autotimm.backbones import TimmFeatureBackbone
from autotimm.heads import HEADS, FCNHead

TINY = FeatureBackboneConfig("test_resnet", pretrained=False)


def make(**kw):
    kw.setdefault("backbone", TINY)
    kw.setdefault("num_classes", 3)
    return SemanticSegmentor(**kw)


@pytest.mark.parametrize("head_type", ["deeplabv3plus", "fcn"])
def test_forward_and_predict_at_input_resolution(head_type):
    model = make(head_type=head_type).eval()
    x = torch.randn(2, 3, 96, 64)
    assert model(x).shape == (2, 3, 96, 64)
    pred = model.predict(x)
    assert pred.shape == (2, 96, 64) and pred.dtype == torch.int64
    assert model.predict(x, original_size=(300, 200)).shape == (2, 300, 200)


def test_predict_matches_argmax_of_forward():
    model = make().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.predict(x), model(x).argmax(1))


def test_deeplab_rates_follow_output_stride_and_low_level_is_stride4():
    for os_, rates in ((None, (3, 6, 9)), ("auto", (6, 12, 18)), (16, (6, 12, 18)), (8, (12, 24, 36))):
        model = make(backbone=FeatureBackboneConfig("resnet18", pretrained=False, output_stride=os_))
        assert model.head.aspp.atrous_rates == rates
        assert model.backbone.reductions[model.head.low_index] == 4


def test_output_stride_auto_is_the_heads_preference_and_is_saved_resolved(tmp_path):
    """``output_stride: auto`` (the default): DeepLabV3+ dilates a backbone that can to stride 16; FCN and a plain ViT
    keep the native stride; the checkpoint holds the number, so reloading rebuilds the same network."""
    cases = [("test_resnet", "deeplabv3plus", 16, [2, 4, 8, 16, 16]),
             ("test_resnet", "fcn", None, [2, 4, 8, 16, 32]),
             ("test_vit", "deeplabv3plus", None, [4, 8, 16, 32]),
             ("test_convnext", "deeplabv3plus", 16, [4, 8, 16, 16])]
    for name, head, saved, reds in cases:
        model = SemanticSegmentor(FeatureBackboneConfig(name, pretrained=False), num_classes=3, head_type=head)
        assert FeatureBackboneConfig(name).output_stride == "auto"
        assert model.backbone.reductions == reds, (name, head)
        assert model.hparams.backbone["output_stride"] == saved
        assert model.preprocess["pad_multiple"] == reds[-1]
    native = SemanticSegmentor(FeatureBackboneConfig("test_resnet", pretrained=False, output_stride=None),
                               num_classes=3)
    assert native.backbone.reductions[-1] == 32 and native.head.aspp.atrous_rates == (3, 6, 9)
    model = SemanticSegmentor(FeatureBackboneConfig("test_resnet", pretrained=False), num_classes=3)
    path = tmp_path / "os.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": pl.__version__}, path)
    loaded = SemanticSegmentor.load_from_checkpoint(str(path), weights_only=True)
    assert loaded.backbone.reductions == [2, 4, 8, 16, 16] and loaded.hparams.backbone["output_stride"] == 16
    with pytest.raises(ValueError, match="backbone.output_stride"):
        FeatureBackboneConfig("test_resnet", output_stride="16")


def test_plain_vit_gets_a_pyramid():
    bb = TimmFeatureBackbone(FeatureBackboneConfig("test_vit", pretrained=False))
    assert bb.reductions == [4, 8, 16, 32]
    feats = bb(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]


TEST_MODELS = timm.list_models("test_*")


@pytest.mark.parametrize("name", TEST_MODELS)
def test_every_timm_test_model_trains_a_step(name):
    size = timm.create_model(name, pretrained=False).pretrained_cfg["input_size"][-1]
    model = make(backbone=FeatureBackboneConfig(name, pretrained=False, img_size=None))
    x = torch.randn(2, 3, size, size)
    y = torch.randint(0, 3, (2, size, size))
    y[:, :4] = 255
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.head.parameters()]
    loss = model.training_step({"image": x, "mask": y}, 0)
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.head.parameters()))


def test_hparams_are_plain_data_and_checkpoint_reloads_weights_only(tmp_path):
    model = make(head_type="fcn", loss_type="tversky", lr=3e-3, optimizer={"name": "sgd", "momentum": 0.8},
                 metrics=[MetricConfig(name="miou", metric_class="JaccardIndex", params={"task": "multiclass"})],
                 logging_config=LoggingConfig(log_gradient_norm=True))
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.strategy.connect(model)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded = SemanticSegmentor.load_from_checkpoint(path, weights_only=True)
    assert isinstance(loaded.head, FCNHead) and loaded.loss_type == "tversky" and loaded.lr == 3e-3
    assert loaded.hparams.backbone["pretrained"] is False
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), loaded.eval()(x))
    assert not any("_orig_mod" in k for k in torch.load(path, weights_only=True)["state_dict"])


def test_compile_is_skipped_on_cpu_unless_forced():
    model = make()
    model._maybe_compile()
    assert not model._compiled
    assert not any("_orig_mod" in k for k in model.state_dict())


def test_per_class_iou_is_named_exact_and_averages_to_miou():
    """val/iou_<class name> from the confusion matrix of the scored predictions: hand-computed values, key-safe
    names, and their mean equals the macro mIoU metric."""
    from types import SimpleNamespace

    miou = MetricConfig(name="miou", metric_class="JaccardIndex", params={"task": "multiclass", "average": "macro"},
                        stages=["val"])
    model = make(class_names=["Sky", "road side", "car"], metrics=[miou])
    target = torch.tensor([[[0, 0, 1], [1, 2, 2]]])
    pred = torch.tensor([[[0, 1, 1], [1, 2, 0]]])
    model.forward = lambda x: torch.nn.functional.one_hot(pred, 3).permute(0, 3, 1, 2).float()
    logged = {}
    model.log = lambda name, value, **k: logged.__setitem__(name, float(value.compute() if hasattr(value, "compute")
                                                                         else value))
    model._eval_step({"image": torch.zeros(1, 3, 2, 3), "mask": target}, "val")
    model.on_validation_epoch_end()
    # class 0: 1 shared of 3 pixels; class 1: 2 of 3; class 2: 1 of 2
    assert logged["val/iou_sky"] == pytest.approx(1 / 3)
    assert logged["val/iou_road_side"] == pytest.approx(2 / 3)
    assert logged["val/iou_car"] == pytest.approx(1 / 2)
    assert logged["val/miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    # without names of its own, the model adopts the data module's (and keeps them in its hyper-parameters)
    other = make()
    other._trainer = SimpleNamespace(datamodule=SimpleNamespace(class_names=["a", "b", "c"]))
    other.on_validation_start()
    other._trainer = None
    assert other.class_names == ["a", "b", "c"] and other.hparams["class_names"] == ["a", "b", "c"]
    assert make().metric_class_keys() == ["0", "1", "2"]
    with pytest.raises(ValueError, match="class_names: 2 names for num_classes=3"):
        make(class_names=["a", "b"])


def test_channels_last_auto_follows_device_and_precision():
    """channels_last="auto": contiguous for fp32 on CPU, channels-last under bf16 autocast; outputs unchanged."""
    from types import SimpleNamespace

    torch.manual_seed(0)
    model = make(channels_last="auto").eval()
    x = torch.randn(2, 3, 64, 64)
    ref = model(x)
    for precision, on in (("32-true", False), ("bf16-mixed", True)):
        model._trainer = SimpleNamespace(precision=precision)
        model._apply_channels_last(model._channels_last_pays())
        conv = next(m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
        assert model.model.channels_last is on
        assert conv.is_contiguous(memory_format=torch.channels_last if on else torch.contiguous_format)
        assert torch.allclose(model(x), ref, atol=1e-5)
    model._trainer = None
    with pytest.raises(ValueError, match="channels_last must be true, false or 'auto'"):
        make(channels_last="yes")


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd", "rmsprop", {"name": "sgd", "nesterov": True},
                                       {"class": "torch.optim.NAdam"}])
@pytest.mark.parametrize("scheduler", ["cosine", "step", "onecycle", "poly", "none", None,
                                       {"name": "cosine", "warmup_steps": 5}])
def test_optimizers_and_schedulers(optimizer, scheduler):
    model = make(optimizer=optimizer, scheduler=scheduler)
    out = model.configure_optimizers()
    opt = out["optimizer"] if isinstance(out, dict) else out
    assert isinstance(opt, torch.optim.Optimizer)
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    for p in model.parameters():  # norms and biases: no weight decay; conv weights: the configured decay
        assert decay_of[id(p)] == (0.0 if p.ndim <= 1 else model.weight_decay)


@pytest.mark.parametrize("kw, match", [
    ({"head_type": "pspnet"}, r"head_type: unknown value 'pspnet'; valid: " + re.escape(str(sorted(HEADS)))),
    ({"loss_type": "jaccard"},
     r"loss_type: unknown value 'jaccard'; valid: \['ce', 'combined', 'dice', 'focal', 'lovasz', 'ohem', 'tversky'\]"),
    ({"optimizer": "lamb"}, r"optimizer: unknown value 'lamb'; valid: \['adam', 'adamw', 'rmsprop', 'sgd'\]"),
    ({"scheduler": "warm"}, r"scheduler: unknown value 'warm'"),
    ({"num_classes": 0}, "num_classes must be an integer >= 1"),
    ({"loss_type": "combined", "ce_weight": 0.0, "dice_weight": 0.0}, "both 0"),
])
def test_invalid_configuration_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        make(**kw)


def test_freeze_backbone():
    model = make(freeze_backbone=True)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    model.train()
    assert not model.backbone.training and model.head.training
    opt = model.configure_optimizers()["optimizer"]
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in model.head.parameters())


def test_metric_gets_num_classes_and_ignore_index():
    model = make(metrics=[MetricConfig(name="miou", metric_class="JaccardIndex",
                                       params={"task": "multiclass", "average": "macro"}, stages=["val"])])
    metric = model.metric_manager.metrics["val__miou"]
    assert metric.num_classes == 3 and metric.ignore_index == 255
    target = torch.tensor([[[0, 1, 2, 255]]])
    metric.update(torch.tensor([[[0, 1, 2, 0]]]), target)  # the 255 pixel is not counted
    assert metric.compute().item() == pytest.approx(1.0)


def test_logits_to_original_crops_padding_and_resizes():
    model = make()
    logits = torch.zeros(1, 3, 8, 8)
    logits[:, 1, :4, :] = 5  # valid region: rows 0..3 (the rest is padding) -> class 1 at every original pixel
    logits[:, 2, 4:, :] = 5
    out = model.logits_to_original(logits, torch.tensor([[4, 8]]), torch.tensor([[10, 20]]))
    assert out[0].shape == (10, 20) and (out[0] == 1).all()


def test_validation_scores_original_resolution_labels():
    model = make(metrics=[MetricConfig(name="acc", metric_class="Accuracy",
                                       params={"task": "multiclass", "average": "micro"}, stages=["val"])])
    batch = {"image": torch.randn(1, 3, 32, 32), "mask": torch.zeros(1, 32, 32, dtype=torch.long),
             "orig_size": torch.tensor([[50, 100]]), "valid_size": torch.tensor([[16, 32]]),
             "orig_mask": [torch.zeros(50, 100, dtype=torch.long)]}
    metric = model.metric_manager.metrics["val__acc"]
    model.eval().log = lambda *a, **k: None  # no trainer attached
    model._eval_step(batch, "val")
    assert int(metric.tp.sum() + metric.fn.sum()) == 50 * 100  # scored at 50x100, not 32x32


def test_aux_head_adds_its_weighted_loss_in_training_only(tmp_path):
    """Deep supervision (``aux_weight``): an FCN head on the second-deepest level; the training loss is the main
    criterion plus aux_weight x the criterion of the aux logits; forward / predict / reload run the main head."""
    assert make().model.aux_head is None
    model = make(aux_weight=0.4).eval()  # eval: dropout off, BatchNorm on running stats, so two passes agree
    aux = model.model.aux_head
    assert isinstance(aux, FCNHead) and aux.block[0].in_channels == model.backbone.channels[-2]
    x = torch.randn(2, 3, 64, 64)
    y = torch.randint(0, 3, (2, 64, 64))
    y[:, :5] = 255
    logits, aux_logits = model.model(x, aux=True)
    assert logits.shape == aux_logits.shape == (2, 3, 64, 64)
    main, extra = model.criterion(logits, y), model.criterion(aux_logits, y)
    loss = model.training_step({"image": x, "mask": y}, 0)
    assert torch.allclose(loss, main + 0.4 * extra) and extra > 0
    assert torch.equal(model(x), logits)  # inference: the main head alone
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in aux.parameters() if p.ndim > 1)
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "aux.ckpt")
    loaded = SemanticSegmentor.load_from_checkpoint(tmp_path / "aux.ckpt", weights_only=True).eval()
    assert loaded.aux_weight == 0.4 and torch.equal(loaded.model(x, aux=True)[1], aux_logits)
    level1 = make(aux_weight=1.0, aux_level=1)
    assert level1.model.aux_head.block[0].in_channels == level1.backbone.channels[1]


@pytest.mark.parametrize("kw, match", [
    ({"aux_weight": -0.4}, "aux_weight must be a number >= 0, got -0.4"),
    ({"aux_weight": 0.4, "aux_level": 5},
     r"aux_level 5 is not one of the backbone's 5 levels \(expected -5..4; channels"),
])
def test_aux_head_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        make(**kw)


def test_aux_weight_with_a_ready_model_needs_its_aux_head():
    from autotimm.models.semantic import SemanticModel

    net = TimmFeatureBackbone(TINY)
    bare = SemanticModel(net, FCNHead(net.channels, 3))
    with pytest.raises(ValueError, match="the model needs an aux_head"):
        SemanticSegmentor(TINY, num_classes=3, model=bare, aux_weight=0.4)
    with pytest.raises(ValueError, match="forward\\(aux=True\\) needs an aux_head"):
        bare.eval()(torch.randn(1, 3, 32, 32), aux=True)


def test_paste_classes_copies_the_named_classes_from_another_image():
    """Three images of constant colour 0/1/2 whose masks hold class 0 everywhere but a class-2 square (and a class-1
    square in image 1, not pasted): with prob 1 every image takes its source's class-2 square, pixels and labels,
    from a different image; nothing else changes, the inputs are untouched."""
    from autotimm.data.transforms import paste_classes

    images = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 3, 8, 8).clone()
    masks = torch.zeros(3, 8, 8, dtype=torch.long)
    for i in range(3):
        masks[i, 2 * i:2 * i + 2, 0:2] = 2        # a 2x2 square of class 2, at rows 2i..2i+1
    masks[1, 6:, 6:] = 1
    masks[2, 0, 7] = 255
    before = images.clone(), masks.clone()
    out_img, out_mask = paste_classes(images, masks, [2], prob=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(images, before[0]) and torch.equal(masks, before[1])
    sources = []
    for i in range(3):
        pasted = (out_mask[i] == 2) & (masks[i] != 2)
        assert int(pasted.sum()) == 4                             # one other image's square, whole
        rows = pasted.nonzero()[:, 0].unique()
        j = int(rows[0]) // 2
        assert j != i and torch.equal(rows, torch.tensor([2 * j, 2 * j + 1]))
        assert (out_img[i][:, pasted] == j).all() and (out_img[i][:, ~pasted] == i).all()
        assert torch.equal(out_mask[i][~pasted], masks[i][~pasted])   # class 1, 255 and the rest kept
        sources.append(j)
    assert sorted(sources) == [0, 1, 2]                             # a permutation: each image is a source once
    same = paste_classes(images, masks, [2], prob=0.0)
    assert same[0] is images and same[1] is masks


def test_paste_classes_option_in_training_and_its_errors():
    model = make(paste_classes=[1], paste_prob=1.0)
    x = torch.randn(2, 3, 32, 32)
    y = torch.zeros(2, 32, 32, dtype=torch.long)
    y[0, :8] = 1
    seen = {}
    model.training_loss = lambda images, masks: (seen.update(masks=masks) or torch.tensor(1.0), None)
    model.log = lambda *a, **k: None
    model.training_step({"image": x, "mask": y}, 0)
    assert torch.equal(seen["masks"][1, :8], torch.ones(8, 32, dtype=torch.long))  # image 1 got image 0's class 1
    with pytest.raises(ValueError, match=r"paste_classes \[3\]: expected class ids in 0\.\.2"):
        make(paste_classes=[3])
    with pytest.raises(ValueError, match=r"paste_prob must be in \[0, 1\], got 1\.5"):
        make(paste_classes=[1], paste_prob=1.5)
