"""What the task logs beyond losses and metrics."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class LoggingConfig:
    """Args:
        log_learning_rate: log ``train/lr`` (first param group) every step.
        log_gradient_norm: log ``train/grad_norm`` (global L2 norm, before clipping) every step.
        log_weight_norm: log ``train/weight_norm`` (global L2 norm of trainable weights) every step.
    """

    log_learning_rate: bool = True
    log_gradient_norm: bool = False
    log_weight_norm: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def as_logging_config(cfg: LoggingConfig | dict | None) -> LoggingConfig:
    if cfg is None:
        return LoggingConfig()
    if isinstance(cfg, LoggingConfig):
        return cfg
    return LoggingConfig(**{k: v for k, v in dict(cfg).items() if k != "_target_"})
