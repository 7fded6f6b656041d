"""Preprocessing from the backbone's timm pretrained config, stored in the checkpoint, used by data and predict."""

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from test_predict import save

from autotimm import FeatureBackboneConfig, SegmentationDataModule, SemanticSegmentor
from autotimm.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from autotimm.inference import predict_semantic

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


@pytest.mark.parametrize("name, mean, std, interpolation", [
    ("vit_small_patch16_224", [0.5] * 3, [0.5] * 3, "bicubic"),  # augreg weights: 0.5 / 0.5
    ("eva02_tiny_patch14_224", CLIP_MEAN, CLIP_STD, "bicubic"),  # EVA-02 (CLIP statistics)
    ("resnet18", list(IMAGENET_MEAN), list(IMAGENET_STD), "bicubic"),
])
def test_mean_std_come_from_the_backbone(name, mean, std, interpolation):
    model = SemanticSegmentor(FeatureBackboneConfig(name, pretrained=False), num_classes=3,
                              preprocess={"image_size": 64})
    pre = model.hparams["preprocess"]
    assert pre["mean"] == pytest.approx(mean) and pre["std"] == pytest.approx(std)
    assert pre["interpolation"] == interpolation and pre["image_size"] == 64
    assert pre["pad_multiple"] == model.backbone.output_stride


def test_overrides_and_bad_values():
    tiny = FeatureBackboneConfig("test_resnet", pretrained=False)
    model = SemanticSegmentor(tiny, num_classes=2, preprocess={"mean": [0.1, 0.2, 0.3], "std": None})
    assert model.preprocess["mean"] == [0.1, 0.2, 0.3] and model.preprocess["std"] == [0.5] * 3
    with pytest.raises(ValueError, match=r"preprocess.std: expected 3 values"):
        SemanticSegmentor(tiny, num_classes=2, preprocess={"std": [0.5]})
    with pytest.raises(ValueError, match=r"preprocess: unknown key\(s\) \['resolution'\]"):
        SemanticSegmentor(tiny, num_classes=2, preprocess={"resolution": 2})


def write_png_dataset(root, n=3, size=(40, 60)):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / split / "images" / f"{i}.png")
            Image.fromarray(rng.integers(0, 3, size, dtype=np.uint8)).save(root / split / "masks" / f"{i}.png")
    return root


def test_checkpoint_holds_preprocess_and_predict_equals_validation(tmp_path):
    """The data module feeds the model's statistics; the checkpoint stores them with the training size; predict on
    a raw image reproduces exactly the validation path's class map for that image."""
    from autotimm.cli.predict import load_task
    from autotimm.data.dataset import read_image

    root = write_png_dataset(tmp_path / "data")
    torch.manual_seed(0)
    model = SemanticSegmentor(FeatureBackboneConfig("test_resnet", pretrained=False), num_classes=3)
    dm = SegmentationDataModule(root, format="png", image_size=64, batch_size=2, num_workers=0, num_classes=3)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    val_maps = trainer.predict(model.eval(), datamodule=dm)  # the validation pipeline, at each original size
    assert dm.preprocess["mean"] == [0.5] * 3  # test_resnet's pretrained config, not ImageNet's
    assert model.preprocess["image_size"] == 64  # the data's training size, adopted by the model
    save(model, tmp_path / "m.ckpt")
    ckpt = torch.load(tmp_path / "m.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["preprocess"] == {"mean": [0.5] * 3, "std": [0.5] * 3,
                                                      "interpolation": "bilinear", "image_size": 64,
                                                      "pad_multiple": 16}  # DeepLabV3+: OS 16
    loaded = load_task(tmp_path / "m.ckpt")
    files = sorted((root / "val" / "images").glob("*.png"), key=lambda p: int(p.stem))
    val_maps = [m for batch in val_maps for m in batch]
    for path, want in zip(files, val_maps):
        got = predict_semantic(loaded, read_image(path))
        assert got.shape == (40, 60) and np.array_equal(got, want.numpy())


def test_explicit_data_statistics_travel_to_the_model(tmp_path):
    root = write_png_dataset(tmp_path / "data")
    model = SemanticSegmentor(FeatureBackboneConfig("test_resnet", pretrained=False), num_classes=3)
    dm = SegmentationDataModule(root, format="png", image_size=32, batch_size=2, num_workers=0,
                                mean=IMAGENET_MEAN, std=IMAGENET_STD)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_predict_batches=1)
    trainer.predict(model, datamodule=dm)
    assert model.hparams["preprocess"]["mean"] == pytest.approx(IMAGENET_MEAN)
    assert model.hparams["preprocess"]["std"] == pytest.approx(IMAGENET_STD)
    assert model.hparams["preprocess"]["image_size"] == 32


def test_fixed_size_backbone_built_for_the_training_size_and_named_when_a_size_does_not_fit():
    """test_vit_relpos (relative-position ViT: fixed size, no dynamic_img_size) is built for preprocess.image_size;
    predict brings any image to that size; a sliding window of another size fails naming the backbone and size."""
    backbone = FeatureBackboneConfig("test_vit_relpos", pretrained=False)
    with pytest.raises(AssertionError, match=r"Input height \(64\) doesn't match model \(160\)"):
        SemanticSegmentor(backbone, num_classes=3).eval()(torch.zeros(1, 3, 64, 64))  # timm's default: 160 only
    model = SemanticSegmentor(backbone, num_classes=3, preprocess={"image_size": 64}).eval()
    rng = np.random.default_rng(0)
    for shape in [(50, 90, 3), (120, 70, 3)]:
        assert predict_semantic(model, rng.integers(0, 255, shape, dtype=np.uint8)).shape == shape[:2]
    with pytest.raises(ValueError, match=r"backbone test_vit_relpos cannot take a 96x96 input .* built for 64x64"):
        predict_semantic(model, rng.integers(0, 255, (100, 100, 3), dtype=np.uint8),
                         tta={"mode": "slide", "crop_size": 96})
