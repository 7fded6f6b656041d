"""Metric configuration, and the metrics torchmetrics does not have (``MatchingAccuracy``: DSB2018's score)."""

from .config import MetricConfig, MetricManager, as_metric_config, build_metric
from .matching import MatchingAccuracy

__all__ = ["MatchingAccuracy", "MetricConfig", "MetricManager", "as_metric_config", "build_metric"]
