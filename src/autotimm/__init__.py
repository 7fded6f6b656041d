"""autotimm: semantic and instance segmentation on any timm backbone."""

from . import head, heads, loss, losses, metric, metrics, task, tasks  # noqa: F401  (both import styles)
from .backbones import FeatureBackboneConfig
from .data import (
    InstanceSegmentationDataModule,
    SegmentationDataModule,
    ShapesDataModule,
    ShapesInstanceDataModule,
)
from .heads import ASPP, DeepLabV3PlusHead, FCNHead, MaskHead
from .losses import (
    CombinedSegmentationLoss,
    CrossEntropySegmentationLoss,
    DiceLoss,
    FocalLossPixelwise,
    MaskLoss,
    TverskyLoss,
)
from .metrics import MetricConfig
from .tasks import InstanceSegmentor, SemanticSegmentor
from .training import AutoTrainer, LoggingConfig

__version__ = "0.1.0"

__all__ = [
    "ASPP", "AutoTrainer", "CombinedSegmentationLoss", "CrossEntropySegmentationLoss", "DeepLabV3PlusHead", "DiceLoss",
    "FCNHead", "FeatureBackboneConfig", "FocalLossPixelwise", "InstanceSegmentationDataModule", "InstanceSegmentor",
    "LoggingConfig", "MaskHead", "MaskLoss", "MetricConfig", "SegmentationDataModule", "SemanticSegmentor",
    "ShapesDataModule", "ShapesInstanceDataModule", "TverskyLoss",
]
