"""The segmentation API reference's examples and import styles, with small backbones and sizes."""

import pytest
import torch

import autotimm
from autotimm import FeatureBackboneConfig

SMALL = FeatureBackboneConfig("test_resnet", pretrained=False)


def test_direct_imports():
    from autotimm import DeepLabV3PlusHead, DiceLoss, SegmentationDataModule, SemanticSegmentor  # noqa: F401


def test_submodule_aliases_and_original_imports():
    from autotimm.head import DeepLabV3PlusHead as H1
    from autotimm.heads import DeepLabV3PlusHead as H2
    from autotimm.loss import CombinedSegmentationLoss  # noqa: F401
    from autotimm.loss import DiceLoss as L1
    from autotimm.losses import DiceLoss as L2
    from autotimm.metric import MetricConfig as M1
    from autotimm.metrics import MetricConfig as M2
    from autotimm.task import SemanticSegmentor as T1
    from autotimm.tasks import SemanticSegmentor as T2

    assert H1 is H2 and L1 is L2 and M1 is M2 and T1 is T2


def test_namespace_access():
    model = autotimm.task.SemanticSegmentor(backbone=SMALL, num_classes=3)
    loss = autotimm.loss.DiceLoss(num_classes=3)
    head = autotimm.head.DeepLabV3PlusHead(in_channels=[32, 32, 48, 192, 96], num_classes=3,
                                           reductions=[2, 4, 8, 16, 32])
    assert isinstance(model, autotimm.SemanticSegmentor) and isinstance(loss, autotimm.DiceLoss)
    feats = model.backbone(torch.randn(1, 3, 64, 64))
    assert head(feats).shape == (1, 3, 16, 16)


def test_basic_semantic_segmentation_example(tmp_path):
    from autotimm import MetricConfig, SegmentationDataModule, SemanticSegmentor

    data = SegmentationDataModule(data_dir=str(tmp_path), format="png", image_size=64, batch_size=8)
    model = SemanticSegmentor(
        backbone=SMALL,
        num_classes=21,
        head_type="deeplabv3plus",
        loss_type="combined",
        ce_weight=1.0,
        dice_weight=1.0,
        metrics=[MetricConfig(name="iou", backend="torchmetrics", metric_class="JaccardIndex",
                              params={"task": "multiclass", "num_classes": 21, "average": "macro"},
                              stages=["val"], prog_bar=True)],
    )
    assert data.image_size == 64 and model.num_classes == 21


def test_alias_example_and_direct_losses():
    from autotimm.loss import CombinedSegmentationLoss, DiceLoss, TverskyLoss
    from autotimm.task import SemanticSegmentor

    model = SemanticSegmentor(backbone=SMALL, num_classes=19, head_type="deeplabv3plus", loss_type="combined")
    dice_loss = DiceLoss(num_classes=19, ignore_index=255)
    combined_loss = CombinedSegmentationLoss(num_classes=19, ce_weight=1.0, dice_weight=1.0)
    tversky = TverskyLoss(num_classes=19, alpha=0.3, beta=0.7, ignore_index=255)
    logits, target = torch.randn(1, 19, 8, 8), torch.randint(0, 19, (1, 8, 8))
    for loss in (dice_loss, combined_loss, tversky):
        assert torch.isfinite(loss(logits, target))
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 19, 64, 64)


def test_advanced_configuration_example():
    from autotimm import LoggingConfig, SemanticSegmentor

    model = SemanticSegmentor(
        backbone=SMALL, num_classes=19, head_type="deeplabv3plus", loss_type="combined", ce_weight=1.0,
        dice_weight=1.0,
        logging_config=LoggingConfig(log_learning_rate=True, log_gradient_norm=True, log_weight_norm=True),
        freeze_backbone=False,
    )
    assert model.logging_config.log_weight_norm


def test_string_backbone_without_network_gives_a_clear_error():
    with pytest.raises(RuntimeError, match=r"pretrained=False"):
        autotimm.SemanticSegmentor(backbone="test_resnet", num_classes=3)
