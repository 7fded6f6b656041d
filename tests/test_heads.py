"""Semantic heads as plug-ins: every head in conf/head/ (discovered, not listed) trains on CNN, ConvNeXt and ViT
backbones; the new decoders' output strides; a head defined outside the package trains through one YAML."""

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf

from autotimm import FeatureBackboneConfig, SemanticSegmentor
from autotimm.heads import RoIMaskHead, SegFormerHead, UNetHead, UPerNetHead

CONF = Path(__file__).resolve().parents[1] / "conf" / "head"


def semantic_heads() -> dict[str, dict]:
    """Every head YAML whose target is not an instance mask head, as the plain spec the task takes."""
    out = {}
    for f in sorted(CONF.glob("*.yaml")):
        spec = OmegaConf.to_container(OmegaConf.load(f))
        if not issubclass(get_class(spec["_target_"]), RoIMaskHead):
            out[f.stem] = spec
    return out


HEADS = semantic_heads()
BACKBONES = ["test_resnet", "test_convnext", "test_vit", "test_efficientnet"]


def test_discovery_finds_the_shipped_heads():
    assert {"deeplabv3plus", "fcn", "upernet", "segformer", "unet"} <= set(HEADS)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("name", sorted(HEADS))
def test_every_head_trains_on_every_kind_of_backbone(name, backbone):
    torch.manual_seed(0)
    model = SemanticSegmentor(FeatureBackboneConfig(backbone, pretrained=False), num_classes=3, head=HEADS[name],
                              lr=1e-2, compile_model=False)
    model.log = lambda *a, **k: None
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    assert model(x).shape == (2, 3, 64, 64)  # logits at the input resolution, whatever the head's stride
    before = [p.detach().clone() for p in model.head.parameters()]
    loss = model.training_step({"image": x, "mask": y}, 0)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.head.parameters()))  # the head learned


@pytest.mark.parametrize("cls, backbone, stride", [
    (UPerNetHead, "test_resnet", 4), (UPerNetHead, "test_convnext", 4), (UPerNetHead, "test_vit", 4),
    (SegFormerHead, "test_resnet", 4), (SegFormerHead, "test_convnext", 4), (SegFormerHead, "test_vit", 4),
    (UNetHead, "test_resnet", 2), (UNetHead, "test_convnext", 4), (UNetHead, "test_vit", 4),
])
def test_new_heads_output_stride_and_levels(cls, backbone, stride):
    model = SemanticSegmentor(FeatureBackboneConfig(backbone, pretrained=False), num_classes=5, head=cls).eval()
    feats = model.backbone(torch.randn(1, 3, 64, 96))
    with torch.no_grad():
        logits = model.head(feats)
    assert logits.shape == (1, 5, 64 // stride, 96 // stride)
    reds = model.backbone.reductions
    want = [i for i, r in enumerate(reds) if r >= (1 if cls is UNetHead else 4)]
    assert model.head.levels == want  # the stride-2 stem level only for the U-Net


def test_upernet_pyramid_pooling_bins():
    head = UPerNetHead([8, 16], num_classes=2, reductions=[4, 8], channels=8, pool_scales=(1, 2, 3, 6))
    assert head.ppm.scales == (1, 2, 3, 6) and len(head.ppm.branches) == 4
    out = head.eval()([torch.randn(1, 8, 24, 24), torch.randn(1, 16, 12, 12)])
    assert out.shape == (1, 2, 24, 24)


USER_HEAD = '''
import torch.nn as nn


class TinyHead(nn.Module):
    """A user's head: the contract is in_channels (per level), reductions, num_classes + its own kwargs."""

    def __init__(self, in_channels, reductions, num_classes, hidden=8):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_channels[-1], hidden, 1), nn.ReLU(), nn.Conv2d(hidden, num_classes, 1))

    def forward(self, features):
        return self.net(features[-1])
'''


@pytest.mark.slow
def test_head_outside_the_package_trains_through_one_yaml(tmp_path, shapes_root):
    from test_cli import run

    (tmp_path / "myheads.py").write_text(USER_HEAD)
    (tmp_path / "conf" / "head").mkdir(parents=True)
    (tmp_path / "conf" / "head" / "tiny.yaml").write_text("_target_: myheads.TinyHead\n_partial_: true\nhidden: 12\n")
    run("train.py", "--config-dir", str(tmp_path / "conf"), "head=tiny", "backbone=test_resnet",
        f"paths.log_dir={tmp_path}/outputs", f"dataset.data_dir={shapes_root}", "dataset.num_train=24",
        "dataset.num_val=8", "dataset.source_size=64", "dataset.seed=3", "dataset.image_size=64",
        "dataset.num_workers=0", "trainer.max_epochs=1", env={"PYTHONPATH": str(tmp_path)})
    out = next((tmp_path / "outputs" / "train" / "runs").iterdir())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and 0 <= metrics["val/miou"] <= 1
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["head"] == {"_target_": "myheads.TinyHead", "hidden": 12}
    assert ckpt["state_dict"]["model.head.net.0.weight"].shape == (12, 96, 1, 1)
