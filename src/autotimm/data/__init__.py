"""Data: on-disk formats, augmentation presets, datasets, datamodules and the generated shapes dataset."""

from .datamodule import SegmentationDataModule
from .dataset import SegmentationDataset, collate_segmentation
from .formats import FORMATS, DatasetLayoutError
from .instance import InstanceSegmentationDataModule, ShapesInstanceDataModule, collate_instance
from .shapes import SHAPE_CLASSES, ShapesDataModule, generate_shapes
from .transforms import PRESETS

__all__ = ["FORMATS", "PRESETS", "SHAPE_CLASSES", "DatasetLayoutError", "InstanceSegmentationDataModule",
           "SegmentationDataModule", "SegmentationDataset", "ShapesDataModule", "ShapesInstanceDataModule",
           "collate_instance", "collate_segmentation", "generate_shapes"]
