"""Instance architectures as plug-ins: one contract (named losses, per-image detections, post-processing on the
model, checkpoints that say what they hold), Mask R-CNN from torchvision's parts, and an architecture written
outside the package that trains, validates and predicts through one YAML."""

import json
import os
from pathlib import Path

import pytest
import torch
from test_predict import save

from autotimm import FeatureBackboneConfig, InstanceSegmentor
from autotimm.models import FCOSInstanceModel, MaskRCNNModel
from autotimm.tasks import load_task

ROOT = Path(__file__).resolve().parents[1]
TINY = FeatureBackboneConfig("test_resnet", pretrained=False)
MASKRCNN = {"_target_": "autotimm.models.MaskRCNNModel", "fpn_channels": 32, "representation_size": 64,
            "mask_head_convs": 1, "mask_head_channels": 16, "rpn_pre_nms_top_n_train": 200,
            "rpn_post_nms_top_n_train": 100, "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50,
            "box_batch_size_per_image": 32, "anchor_scale": 4.0}
TV_LOSSES = ["loss_box_reg", "loss_classifier", "loss_mask", "loss_objectness", "loss_rpn_box_reg"]


def squares(n_images=2, size=64):
    """Two square instances per image (labels 0 and 2), boxes = their masks' extents."""
    targets = []
    for _ in range(n_images):
        masks = torch.zeros(2, size, size, dtype=torch.uint8)
        masks[0, 8:28, 6:30] = 1
        masks[1, 34:58, 30:60] = 1
        targets.append({"boxes": torch.tensor([[6.0, 8, 30, 28], [30, 34, 60, 58]]), "labels": torch.tensor([0, 2]),
                        "masks": masks, "iscrowd": torch.zeros(2, dtype=torch.bool)})
    return targets


def maskrcnn(**kw):
    torch.manual_seed(0)
    return InstanceSegmentor(TINY, num_classes=3, architecture={**MASKRCNN, **kw})


# ------------------------------------------------------------------------------------------------ Mask R-CNN
def test_maskrcnn_returns_torchvisions_losses_in_train_and_eval_mode():
    task = maskrcnn()
    images = torch.randn(2, 3, 64, 64)
    for mode in (True, False):
        task.train(mode)
        losses = task(images, squares())
        assert sorted(losses) == TV_LOSSES and all(torch.isfinite(v) for v in losses.values())
        assert task.model.rpn.training is mode and task.model.roi_heads.training is mode  # modes restored
    sum(task.train()(images, squares()).values()).backward()
    assert all(p.grad is not None for p in task.model.roi_heads.mask_predictor.parameters())
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
              "masks": torch.zeros(0, 64, 64, dtype=torch.uint8), "iscrowd": torch.zeros(0, dtype=torch.bool)}] * 2
    losses = task(images, empty)
    assert losses["loss_mask"].item() == 0 and losses["loss_box_reg"].item() == 0
    weighted, plain = maskrcnn(loss_weights={"loss_mask": 2.0}).eval(), maskrcnn().eval()  # the same weights
    torch.manual_seed(1)
    a = weighted(images, squares())
    torch.manual_seed(1)
    b = plain(images, squares())
    assert torch.allclose(a["loss_mask"], 2 * b["loss_mask"], rtol=1e-4)
    assert torch.allclose(a["loss_classifier"], b["loss_classifier"], rtol=1e-4)
    with pytest.raises(ValueError, match="loss_weights: unknown loss \\['loss_cls'\\]"):
        maskrcnn(loss_weights={"loss_cls": 1.0})


@pytest.mark.parametrize("mask_size, roi", [(28, 14), (14, 14), (20, 7)])
def test_maskrcnn_mask_size_and_roi_pool_size_mean_what_they_mean_for_fcos(mask_size, roi):
    task = maskrcnn(mask_size=mask_size, roi_pool_size=roi)
    heads = task.model.roi_heads
    assert heads.mask_roi_pool.output_size == (roi, roi)
    logits = heads.mask_predictor(heads.mask_head(torch.randn(3, 32, roi, roi)))
    assert logits.shape == (3, 4, mask_size, mask_size)  # num_classes + torchvision's background


def test_maskrcnn_predictions_and_postprocess_live_on_the_model():
    task = maskrcnn(score_thresh=0.0, max_detections_per_image=20).eval()
    images = torch.randn(2, 3, 64, 96)
    preds = task.predict(images)
    for p in preds:
        assert set(p) == {"boxes", "labels", "scores", "masks"}
        assert p["masks"].shape[1:] == (64, 96) and p["masks"].dtype == torch.uint8
        assert p["labels"].min() >= 0 and p["labels"].max() < 3 and len(p["labels"]) <= 20
    n_all = sum(len(p["scores"]) for p in preds)
    scores = torch.cat([p["scores"] for p in preds])
    thresh = float(scores.median())
    task.model.set_postprocess(score_thresh=thresh)
    assert task.model.roi_heads.score_thresh == thresh and task.model.postprocess["score_thresh"] == thresh
    fewer = task.predict(images)
    assert 0 < sum(len(p["scores"]) for p in fewer) < n_all
    assert all((p["scores"] > thresh).all() for p in fewer)
    task.model.set_postprocess(max_detections_per_image=3)
    assert task.model.roi_heads.detections_per_img == 3
    with pytest.raises(ValueError, match="has no post-processing setting 'pre_nms_top_k'"):
        task.model.set_postprocess(pre_nms_top_k=10)
    # mapped to the original size: the content filled 64 x 64 of the padded input
    det = task.model.predict(images, torch.tensor([[128, 128], [32, 32]]), torch.tensor([[64, 64], [64, 64]]))
    assert det[0]["masks"].shape[1:] == (128, 128) and det[1]["masks"].shape[1:] == (32, 32)
    assert (det[0]["boxes"] <= 128).all() and (det[1]["boxes"] <= 32).all()


@pytest.mark.parametrize("name", ["test_resnet", "test_convnext", "test_efficientnet", "test_vit"])
def test_maskrcnn_on_the_backbones_fcos_takes(name):
    """Every timm backbone the FCOS model takes: CNNs, ConvNeXts, plain ViTs (through the simple pyramid)."""
    backbone = FeatureBackboneConfig(name, pretrained=False)
    for arch in (MASKRCNN, None):
        torch.manual_seed(0)
        task = InstanceSegmentor(backbone, num_classes=3, architecture=arch,
                                 **({} if arch else {"fpn_channels": 32, "head_num_convs": 1}))
        losses = task.train()(torch.randn(2, 3, 64, 64), squares())
        assert losses and all(torch.isfinite(v) for v in losses.values())
        assert len(task.predict(torch.randn(1, 3, 64, 64))) == 1


def test_checkpoint_says_what_it_holds_and_rebuilds_the_architecture(tmp_path):
    task = maskrcnn(score_thresh=0.0).eval()
    save(task, tmp_path / "m.ckpt")
    ckpt = torch.load(tmp_path / "m.ckpt", weights_only=True)
    record = ckpt["autotimm"]
    assert record["task"] == "instance"
    assert record["model"]["architecture"]["_target_"] == "autotimm.models.MaskRCNNModel"
    assert record["model"]["architecture"]["fpn_channels"] == 32 and record["model"]["backbone"]["model_name"] == \
        "test_resnet"
    loaded = load_task(tmp_path / "m.ckpt")
    assert isinstance(loaded, InstanceSegmentor) and isinstance(loaded.model, MaskRCNNModel)
    x = torch.randn(1, 3, 64, 64)
    a, b = task.predict(x)[0], loaded.predict(x)[0]
    assert torch.equal(a["labels"], b["labels"]) and torch.allclose(a["scores"], b["scores"])
    # the seed's signature still builds FCOS, and its checkpoint rebuilds it from the recorded spec alone
    fcos = InstanceSegmentor(TINY, num_classes=2, fpn_channels=32, head_num_convs=1, mask_size=14)
    save(fcos, tmp_path / "f.ckpt")
    loaded = load_task(tmp_path / "f.ckpt")
    assert isinstance(loaded.model, FCOSInstanceModel) and loaded.model.mask_head.mask_size == 14
    assert loaded.model.fpn.out_channels == 32 and "fpn_channels" not in loaded.hparams
    assert torch.load(tmp_path / "f.ckpt", weights_only=True)["autotimm"]["task"] == "instance"


def test_fcos_arguments_with_another_architecture_are_an_error():
    with pytest.raises(ValueError, match=r"\['fpn_channels', 'mask_size'\] configure the default FCOS architecture"):
        InstanceSegmentor(TINY, num_classes=2, fpn_channels=64, mask_size=14, architecture=MASKRCNN)
    with pytest.raises(TypeError, match="is not an autotimm.models.InstanceModelBase"):
        InstanceSegmentor(TINY, num_classes=2, architecture={"_target_": "torch.nn.Identity"})


def test_fcos_postprocess_settings_change_what_predict_returns():
    torch.manual_seed(0)
    task = InstanceSegmentor(TINY, num_classes=3, fpn_channels=32, head_num_convs=1, score_thresh=0.0).eval()
    x = torch.randn(2, 3, 64, 64)
    scores = torch.cat([p["scores"] for p in task.predict(x)])
    assert len(scores) == 200  # 100 per image at threshold 0
    thresh = float(scores.median())
    task.model.set_postprocess(score_thresh=thresh)
    kept = torch.cat([p["scores"] for p in task.predict(x)])
    assert len(kept) == int((scores > thresh).sum()) and (kept > thresh).all()
    task.model.set_postprocess(max_detections_per_image=1500)  # NMS then sees at least that many candidates
    assert task.model.pre_nms_top_k == 1500
    with pytest.raises(ValueError, match="has no post-processing setting 'detections'"):
        task.model.set_postprocess(detections=3)


def test_fcos_mask_min_stride_4_pools_small_boxes_from_a_p2_made_by_the_top_down_rule():
    import torch.nn.functional as F
    from torchvision.ops import roi_align

    arch = {"_target_": "autotimm.models.FCOSInstanceModel", "fpn_channels": 32, "head_num_convs": 1,
            "mask_head": {"_target_": "autotimm.heads.MaskHead", "_partial_": True, "num_convs": 1,
                          "conv_channels": 16}}
    torch.manual_seed(0)
    plain = InstanceSegmentor(TINY, num_classes=3, architecture=arch).model
    torch.manual_seed(0)
    fine = InstanceSegmentor(TINY, num_classes=3, architecture={**arch, "mask_min_stride": 4}).model
    assert plain.fine_level is None and plain.mask_head.featmap_names == ["p3", "p4", "p5"]
    assert fine.mask_head.featmap_names == ["p2", "p3", "p4", "p5"]
    assert fine.mask_head.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    assert fine.fpn.names == plain.fpn.names == ["p3", "p4", "p5", "p6", "p7"]  # the FCOS head keeps P3-P7
    x = torch.randn(2, 3, 128, 128)
    out, ref = fine.features(x), plain.features(x)
    assert out["cls"].shape == ref["cls"].shape  # the same detection locations
    p2, p3 = out["mask_features"]["p2"], out["features"]["p3"]
    assert p2.shape == (2, 32, 32, 32) and p3.shape == (2, 32, 16, 16)  # stride 4 beside stride 8
    with torch.no_grad():  # P2 = lateral(C2) + P3 upsampled (nearest): without the lateral, P3 upsampled exactly
        fine.fine_level.lateral.weight.zero_()
        fine.fine_level.lateral.bias.zero_()
        out = fine.features(x)
    assert torch.equal(out["mask_features"]["p2"], F.interpolate(out["features"]["p3"], scale_factor=2.0))
    feats = out["mask_features"]
    feats["p2"] = torch.randn_like(feats["p2"])  # which level each box pools from (the FPN paper's rule)
    rois = torch.tensor([[0.0, 10, 10, 40, 40], [1.0, 4, 4, 124, 124]])  # 30 px -> P2, 120 px -> P3
    pooled = fine.mask_head.pool_rois(feats, rois)
    assert torch.allclose(pooled[:1], roi_align(feats["p2"], rois[:1], (14, 14), 1 / 4, 2))
    assert torch.allclose(pooled[1:], roi_align(feats["p3"], rois[1:], (14, 14), 1 / 8, 2))
    losses = fine.train()(x, squares(2, 128))
    sum(losses.values()).backward()
    assert fine.fine_level.lateral.weight.grad.abs().sum() > 0  # the mask loss trains the P2 lateral
    with pytest.raises(ValueError, match="mask_min_stride must be 8 \\(P3-P5\\) or 4 \\(P2-P5\\), got 2"):
        InstanceSegmentor(TINY, num_classes=3, architecture={**arch, "mask_min_stride": 2})


# ------------------------------------------------------------------------------------------------ end to end
COMMON = ["dataset.num_train=24", "dataset.num_val=8", "dataset.source_size=64", "dataset.seed=3",
          "dataset.image_size=64", "dataset.batch_size=8", "dataset.num_workers=0", "backbone=test_resnet",
          "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1", "model=instance"]


@pytest.mark.slow
def test_maskrcnn_trains_validates_tests_predicts_evaluates_and_exports(tmp_path, shapes_root):
    from test_cli import run

    common = [f"paths.log_dir={tmp_path}/outputs", f"dataset.data_dir={shapes_root}", *COMMON, "arch=maskrcnn",
              "arch.fpn_channels=32", "arch.representation_size=64", "head.num_convs=1", "head.conv_channels=16",
              "arch.box_batch_size_per_image=64", "arch.rpn_post_nms_top_n_train=200"]
    run("train.py", *common, "test=true", "task_name=mrcnn")
    out = next((tmp_path / "outputs" / "mrcnn" / "runs").iterdir())
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("val/mask_map", "val/mask_map_50", "val/bbox_map", "test/mask_map_50", "train/loss", "val/loss",
                *[f"train/{k}" for k in TV_LOSSES]):  # every loss the model returns, logged by name
        assert key in metrics, key
    ckpt = out / "checkpoints" / "last.ckpt"
    run("eval.py", *common, f"ckpt_path={ckpt}")
    em = json.loads(next((tmp_path / "outputs" / "eval" / "runs").iterdir()).joinpath("metrics.json").read_text())
    assert 0.0 <= em["test/mask_map_50"] <= 1.0
    images = tmp_path / "in"
    images.mkdir()
    (shapes_root / "val" / "images").iterdir()
    first = sorted((shapes_root / "val" / "images").iterdir())[0]
    (images / first.name).write_bytes(first.read_bytes())
    run("predict.py", f"ckpt_path={ckpt}", f"input={images}", f"output={tmp_path / 'pred'}", "score_thresh=0.0",
        f"paths.log_dir={tmp_path}/logs")
    results = json.loads((tmp_path / "pred" / "results.json").read_text())
    assert results and all(r["segmentation"]["size"] == [64, 64] for r in results)
    proc = run("export.py", f"ckpt_path={ckpt}", "format=torchscript", f"output={tmp_path / 'm.pt'}",
               f"paths.log_dir={tmp_path}/logs")
    traced = torch.jit.load(str(tmp_path / "m.pt"))
    task = load_task(ckpt)
    for size in ((64, 64), (80, 96)):  # exported for one image at a time; the size stays dynamic
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            want = task.model.predict_flat(x)
            got = traced(x)
        assert [tuple(t.shape) for t in got] == [tuple(t.shape) for t in want]
        assert torch.allclose(got[1], want[1], atol=1e-4) and torch.equal(got[4], want[4])
    assert "image_index, boxes, scores, labels, masks" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_an_architecture_from_outside_the_package_is_one_file_and_one_yaml(tmp_path, shapes_root):
    """examples/instance_arch: a toy model (per-pixel classes + connected components) and its conf/arch YAML train,
    validate and predict through --config-dir and PYTHONPATH, with nothing in autotimm or these tests naming it."""
    from test_cli import run

    example = ROOT / "examples" / "instance_arch"
    files = sorted(str(p.relative_to(example)) for p in example.rglob("*") if p.is_file() and
                   "__pycache__" not in p.parts)
    assert files == ["conf/arch/pixel_cc.yaml", "pixel_cc.py"]
    env = {"PYTHONPATH": os.pathsep.join([str(example), os.environ.get("PYTHONPATH", "")])}
    run("train.py", "--config-dir", str(example / "conf"), f"paths.log_dir={tmp_path}/outputs",
        f"dataset.data_dir={shapes_root}", *COMMON, "arch=pixel_cc", "task_name=outside", env=env)
    out = next((tmp_path / "outputs" / "outside" / "runs").iterdir())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and 0.0 <= metrics["val/mask_map_50"] <= 1.0
    assert "train/loss_pixel" in metrics  # the model's own loss name, logged as it is
    ckpt = out / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["autotimm"]["model"]["architecture"]["_target_"] == \
        "pixel_cc.PixelCCModel"
    first = sorted((shapes_root / "val" / "images").iterdir())[0]
    run("predict.py", f"ckpt_path={ckpt}", f"input={first}", f"output={tmp_path / 'pred'}", "score_thresh=0.0",
        f"paths.log_dir={tmp_path}/logs", env=env)
    assert (tmp_path / "pred" / f"{first.stem}_overlay.png").is_file()
    assert isinstance(json.loads((tmp_path / "pred" / "results.json").read_text()), list)
