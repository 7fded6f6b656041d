"""Metric configuration."""

from .config import MetricConfig, MetricManager, as_metric_config, build_metric

__all__ = ["MetricConfig", "MetricManager", "as_metric_config", "build_metric"]
