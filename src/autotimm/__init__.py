"""autotimm: semantic and instance segmentation on any timm backbone."""

from . import head, heads, loss, losses, metric, metrics, task, tasks  # noqa: F401  (plural packages)  # noqa: F401  (singular aliases)
from .backbones import FeatureBackboneConfig
from .data import SegmentationDataModule, ShapesDataModule
from .heads import ASPP, DeepLabV3PlusHead, FCNHead
from .losses import CombinedSegmentationLoss, CrossEntropySegmentationLoss, DiceLoss, FocalLossPixelwise, TverskyLoss
from .metrics import MetricConfig
from .tasks import SemanticSegmentor
from .training import AutoTrainer, LoggingConfig

__version__ = "0.1.0"

__all__ = [
    "ASPP", "AutoTrainer", "CombinedSegmentationLoss", "CrossEntropySegmentationLoss", "DeepLabV3PlusHead", "DiceLoss",
    "FCNHead", "FeatureBackboneConfig", "FocalLossPixelwise", "LoggingConfig", "MetricConfig",
    "SegmentationDataModule", "SemanticSegmentor", "ShapesDataModule", "TverskyLoss",
]
