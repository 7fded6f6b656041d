"""Trainer, logging configuration and callbacks."""

from .logging_config import LoggingConfig, as_logging_config
from .trainer import AutoTrainer

__all__ = ["AutoTrainer", "LoggingConfig", "as_logging_config"]
