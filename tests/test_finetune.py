"""Fine-tuning from a checkpoint (init_from): fitting weights loaded, the rest re-initialised and logged."""

import logging

import pytest
import torch
from test_predict import save

from autotimm import FeatureBackboneConfig, InstanceSegmentor, SemanticSegmentor

TINY = FeatureBackboneConfig("test_resnet", pretrained=False)


def test_other_class_count_keeps_everything_but_the_classifier(tmp_path, caplog):
    torch.manual_seed(0)
    src = SemanticSegmentor(TINY, num_classes=3)
    save(src, tmp_path / "src.ckpt")
    torch.manual_seed(1)
    with caplog.at_level(logging.INFO, logger="autotimm"):
        dst = SemanticSegmentor(TINY, num_classes=5, init_from=str(tmp_path / "src.ckpt"))
    theirs, mine = src.model.state_dict(), dst.model.state_dict()
    different = {k for k in mine if not torch.equal(theirs[k], mine[k])}
    assert different == {"head.classifier.weight", "head.classifier.bias"}  # exactly the class-count layer
    assert mine["head.classifier.weight"].shape[0] == 5
    assert "skipped head.classifier.weight: shape (3, 256, 1, 1) in the checkpoint, (5, 256, 1, 1) here" in caplog.text
    assert "init_from" not in dst.hparams  # the new checkpoint holds the weights, not the path


def test_other_task_or_backbone_is_a_clear_error(tmp_path):
    save(InstanceSegmentor(TINY, num_classes=2, fpn_channels=32, head_num_convs=1), tmp_path / "inst.ckpt")
    with pytest.raises(ValueError, match="an instance segmentation checkpoint cannot initialise a semantic model"):
        SemanticSegmentor(TINY, num_classes=2, init_from=str(tmp_path / "inst.ckpt"))
    save(SemanticSegmentor(FeatureBackboneConfig("test_convnext", pretrained=False), num_classes=2),
         tmp_path / "convnext.ckpt")
    with pytest.raises(ValueError, match=r"none of its backbone weights fit .*test_convnext in the checkpoint, "
                                         r"test_resnet here"):
        SemanticSegmentor(TINY, num_classes=2, init_from=str(tmp_path / "convnext.ckpt"))
    with pytest.raises(FileNotFoundError, match="init_from: .*missing.ckpt does not exist"):
        SemanticSegmentor(TINY, num_classes=2, init_from=str(tmp_path / "missing.ckpt"))


def test_instance_fine_tune_with_other_classes(tmp_path):
    torch.manual_seed(0)
    src = InstanceSegmentor(TINY, num_classes=3, fpn_channels=32, head_num_convs=1)
    save(src, tmp_path / "src.ckpt")
    dst = InstanceSegmentor(TINY, num_classes=6, fpn_channels=32, head_num_convs=1,
                            init_from=str(tmp_path / "src.ckpt"))
    theirs, mine = src.model.state_dict(), dst.model.state_dict()
    different = {k for k in mine if not torch.equal(theirs[k], mine[k])}
    assert different == {"head.cls_logits.weight", "head.cls_logits.bias", "mask_head.predictor.weight",
                         "mask_head.predictor.bias"}


def test_hydra_model_init_from(tmp_path):
    """python train.py model.init_from=<ckpt> (here composed and instantiated as train.py does)."""
    from hydra.utils import instantiate
    from test_configs import compose_cfg

    src = SemanticSegmentor(TINY, num_classes=5)
    save(src, tmp_path / "src.ckpt")
    cfg = compose_cfg(tmp_path, ["backbone=test_resnet", f"model.init_from={tmp_path / 'src.ckpt'}"])
    model = instantiate(cfg.model)
    assert torch.equal(model.model.backbone.state_dict()["body.conv1.0.weight"],
                       src.model.backbone.state_dict()["body.conv1.0.weight"])
