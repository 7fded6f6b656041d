"""Trainer, logging configuration and callbacks."""

from .calibration import ScoreThresholdCalibration
from .callbacks import EpochSummary, ProgressLog
from .logging_config import LoggingConfig, as_logging_config
from .trainer import AutoTrainer
from .wandb_panels import WandbImagePanels

__all__ = ["AutoTrainer", "EpochSummary", "LoggingConfig", "ProgressLog", "ScoreThresholdCalibration",
           "WandbImagePanels", "as_logging_config"]
