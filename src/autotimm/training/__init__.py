"""Trainer, logging configuration and callbacks."""

from .callbacks import EpochSummary
from .logging_config import LoggingConfig, as_logging_config
from .trainer import AutoTrainer

__all__ = ["AutoTrainer", "EpochSummary", "LoggingConfig", "as_logging_config"]
